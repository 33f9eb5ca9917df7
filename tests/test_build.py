"""The QEMU builder's fast parts, on small real inputs; the cached path on the real series."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    BuildFailed,
    BuildInputError,
    TapmigError,
    UsageError,
)
from harness.qemu.build import (
    CONFIGURE_FLAGS,
    build_qemu,
    build_variants,
    cache_key,
    cached_binary,
    cached_variant,
)
from harness.qemu.source import (
    expand_patches,
    inspect_source,
    prepare_source,
    split_mbox,
)
from harness.qemu.variants import list_variants, plan_variants, touched_files, variant_key
from harness.vocabulary import Log
from tests.support import REPO

# The series ci/test builds: beside this clone or the repository it was cloned from.
SHARED = Path(subprocess.run([str(REPO / "ci" / "series")], capture_output=True, text=True,
                             timeout=30, check=False).stdout.strip())


def needs(*tools: str) -> pytest.MarkDecorator:
    """Skip, naming the tools, on a host without them (ci/build-qemu installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")

GOOD = b"""--- a/hw/net.c
+++ b/hw/net.c
@@ -1,3 +1,3 @@
 int a;
-int b;
+int b2;
 int c;
"""
# A hunk whose context is not in the file, plus a file that does not exist.
BAD = b"""--- a/hw/net.c
+++ b/hw/net.c
@@ -1,3 +1,3 @@
 int x;
-int y;
+int y2;
 int z;
--- a/net/missing.c
+++ b/net/missing.c
@@ -1 +1 @@
-old
+new
"""


def _message(n: int, subject: str, diff: bytes) -> bytes:
    head = (
        f"From {n:040x} Mon Sep 17 00:00:00 2001\n"
        f"From: Dev <dev@example.org>\nDate: Tue, 2 Jan 2024 10:00:00 +0100\n"
        f"Subject: [PATCH {n}/2] {subject}\n\nWhy it matters.\n"
        f"From here on a body line that is no separator.\n---\n"
    ).encode()
    return head + diff + b"-- \n2.39.2\n\n"


SECOND = b"""--- a/hw/net.c
+++ b/hw/net.c
@@ -1,3 +1,3 @@
 int a;
 int b2;
-int c;
+int c2;
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny fake QEMU tree: a configure file and one C file."""
    src = tmp_path / "qemu"
    (src / "hw").mkdir(parents=True)
    (src / "configure").write_text("#!/bin/sh\nexit 0\n")
    (src / "configure").chmod(0o755)
    (src / "hw" / "net.c").write_text("int a;\nint b;\nint c;\n")
    return src


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _prepare(source: Path, patches: list[Path], tmp_path: Path,
             log: Log = lambda _: None) -> Path:
    """prepare_source into a fresh work dir, its tool output into a real log file."""
    work = tmp_path / "work"
    work.mkdir()
    with (tmp_path / "build.log").open("wb") as logf:
        return prepare_source(inspect_source(source), patches, work, logf, log)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_cache_key_is_stable_and_follows_each_input(tree: Path, tmp_path: Path) -> None:
    patch = _write(tmp_path / "a.patch", GOOD)
    src = inspect_source(tree)
    key, inputs = cache_key(src, [patch], CONFIGURE_FLAGS)
    assert key == cache_key(inspect_source(tree), [patch], list(CONFIGURE_FLAGS))[0]
    assert inputs["configure"] == list(CONFIGURE_FLAGS)

    other = _write(tmp_path / "b.patch", GOOD.replace(b"b2", b"b3"))
    assert cache_key(src, [other], CONFIGURE_FLAGS)[0] != key
    assert cache_key(src, [patch, patch], CONFIGURE_FLAGS)[0] != key
    assert cache_key(src, [patch], [*CONFIGURE_FLAGS, "--enable-debug"])[0] != key
    (tree / "hw" / "net.c").write_text("int a;\nint b;\nint c;\nint d;\n")
    assert cache_key(inspect_source(tree), [patch], CONFIGURE_FLAGS)[0] != key


def test_cache_key_ignores_build_dirs_and_follows_tarball_bytes(
    tree: Path, tmp_path: Path
) -> None:
    key = cache_key(inspect_source(tree), [], CONFIGURE_FLAGS)[0]
    (tree / "build" / "meson-private").mkdir(parents=True)
    (tree / "build" / "build.ninja").write_text("rule cc\n")
    assert cache_key(inspect_source(tree), [], CONFIGURE_FLAGS)[0] == key

    tarballs = []
    for name in ("one", "two"):
        (tree / "VERSION").write_text(name)
        tarballs.append(tmp_path / f"{name}.tar.gz")
        with tarfile.open(tarballs[-1], "w:gz") as tar:
            tar.add(tree, arcname="qemu-1.0")
    keys = {cache_key(inspect_source(t), [], CONFIGURE_FLAGS)[0] for t in tarballs}
    assert len(keys) == 2


def test_split_mbox_keeps_two_messages_in_order() -> None:
    mbox = _message(1, "net: first", GOOD) + _message(2, "net: second", SECOND)
    parts = split_mbox(mbox)
    assert len(parts) == 2
    assert b"net: first" in parts[0] and b"int b2;" in parts[0]
    assert b"net: second" in parts[1] and b"int c2;" in parts[1]
    assert b"".join(parts) == mbox
    assert split_mbox(GOOD) == [GOOD]


@needs("patch")
def test_mbox_applies_message_by_message(tree: Path, tmp_path: Path) -> None:
    cover = (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
             b"Subject: [PATCH 0/2] cover letter\n\nNo diff here.\n")
    mbox = _write(tmp_path / "series.mbox",
                  cover + _message(1, "first", GOOD) + _message(2, "second", SECOND))
    lines: list[str] = []
    out = _prepare(tree, [mbox], tmp_path, lines.append)
    assert (out / "hw" / "net.c").read_text() == "int a;\nint b2;\nint c2;\n"
    assert any("no diff in it, skipped" in line for line in lines)
    assert any("[3/3]" in line and "second" in line for line in lines)


@needs("patch")
def test_good_patch_applies_to_a_copy_and_leaves_the_source_alone(
    tree: Path, tmp_path: Path
) -> None:
    before = _snapshot(tree)
    patches = tmp_path / "patches"
    patches.mkdir()
    _write(patches / "0001-net.patch", GOOD)
    (patches / "README").write_text("not a patch")
    out = _prepare(tree, expand_patches([patches]), tmp_path)
    assert (out / "hw" / "net.c").read_text() == "int a;\nint b2;\nint c;\n"
    assert (out / "configure").stat().st_mode & 0o111
    assert _snapshot(tree) == before
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))


@needs("patch")
def test_bad_patch_names_the_patch_and_the_files(tree: Path, tmp_path: Path) -> None:
    bad = _write(tmp_path / "0002-bad.patch", BAD)
    with pytest.raises(TapmigError) as err:
        _prepare(tree, [bad], tmp_path)
    msg = str(err.value)
    assert "0002-bad.patch" in msg
    assert "hw/net.c (hunk FAILED)" in msg
    assert "net/missing.c (no such file)" in msg
    assert "\n" not in msg


@needs("patch")
def test_patch_applied_twice_is_reported(tree: Path, tmp_path: Path) -> None:
    good = _write(tmp_path / "good.patch", GOOD)
    with pytest.raises(TapmigError, match=r"good.patch does not apply: hw/net.c \(reversed"):
        _prepare(tree, [good, good], tmp_path)


@needs("git")
def test_git_tree_builds_committed_head(tree: Path, tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "base")
    src = inspect_source(tree)
    assert src.kind == "git" and len(src.commit) == 40
    (tree / "hw" / "net.c").write_text("uncommitted\n")
    assert inspect_source(tree).digest == src.digest
    lines: list[str] = []
    out = _prepare(tree, [], tmp_path, lines.append)
    assert (out / "hw" / "net.c").read_text() == "int a;\nint b;\nint c;\n"
    assert any("uncommitted changes" in line for line in lines)


def _bad_input(check: Callable[[], object]) -> str:
    """The path a BuildInputError from check names; it is bad input, exit 2."""
    with pytest.raises(BuildInputError) as err:
        check()
    assert err.value.exit_code == EXIT_USAGE
    return err.value.path


def test_bad_inputs_are_input_errors_naming_the_path(tree: Path, tmp_path: Path) -> None:
    nowhere, zipped = tmp_path / "nowhere", _write(tmp_path / "qemu.zip", b"PK")
    nope, empty = tmp_path / "nope.patch", tmp_path / "empty"
    empty.mkdir()
    assert _bad_input(lambda: inspect_source(nowhere)) == str(nowhere)
    assert _bad_input(lambda: inspect_source(zipped)) == str(zipped)
    assert _bad_input(lambda: expand_patches([nope])) == str(nope)
    assert _bad_input(lambda: expand_patches([empty])) == str(empty)
    (tree / "configure").unlink()
    assert _bad_input(lambda: inspect_source(tree)) == str(tree)


def test_tarball_without_configure_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "notqemu").mkdir()
    (tmp_path / "notqemu" / "README").write_text("hello")
    tarball = tmp_path / "notqemu.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "notqemu", arcname="notqemu")
    assert _bad_input(lambda: _prepare(tarball, [], tmp_path)) == str(tarball)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "harness.qemu.build", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=60, check=False)


def test_cli_missing_source_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = _cli("--source", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_cli_non_qemu_source_and_no_source_exit_2(tmp_path: Path) -> None:
    proc = _cli("--source", str(tmp_path))
    assert proc.returncode == 2 and "no configure" in proc.stderr
    assert proc.stderr.count("\n") == 1
    proc = _cli()
    assert proc.returncode == 2 and "--source" in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.build
def test_cached_shared_series_returns_at_once() -> None:
    """The cached path on the real inputs; building here would take minutes, so skip."""
    source = SHARED / "qemu_10.2.2+ds.orig.tar.xz"
    patches = [SHARED / "build-fixes" / "debian-pc-bios-meson.patch", SHARED / "series"]
    if not source.is_file():
        pytest.skip(f"{source} is missing")
    if cached_binary(source, patches) is None:
        pytest.skip("no cached build of the shared series; run ci/build-qemu first")
    lines: list[str] = []
    binary = build_qemu(source, patches, log=lines.append)
    assert lines == [f"cached: {binary}"]  # nothing configured, built or installed
    version = subprocess.run([str(binary), "-version"], capture_output=True, text=True,
                             timeout=30, check=True)
    assert "10.2.2" in version.stdout


FAKE_CONFIGURE = """#!/bin/sh
# Stands in for QEMU's configure: a build.ninja whose one target is a tiny 'emulator'.
case "$*" in
  *--enable-broken*) echo "ERROR: Dependency glib-2.0 not found"; exit 1;;
  *--enable-ds-bug*) echo "../x/pc-bios/meson.build:22:25: ERROR: File edk2.fd.bz2 does not exist."
                     echo "ERROR: meson setup failed"; exit 1;;
  *--enable-cc-bug*) printf 'rule cc\n  command = echo "cc: error: no such thing"; exit 3\n' \
                         > build.ninja
                     echo 'build qemu-system-x86_64: cc' >> build.ninja; exit 0;;
esac
cat > build.ninja <<'NINJA'
rule emu
  command = sleep $delay && $
    printf '#!/bin/sh\\necho "QEMU emulator version 0.0.1"\\n' > $out && chmod +x $out
build qemu-system-x86_64: emu
  delay = 1
build other: emu
  delay = 0
NINJA
"""


@pytest.fixture
def fake(tree: Path, tmp_path: Path) -> Path:
    """A cache whose meson venv is already there, so no test reaches PyPI."""
    (tree / "configure").write_text(FAKE_CONFIGURE)
    venv = tmp_path / "cache" / "pyvenv-meson-1.9.0"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python3").symlink_to(sys.executable)
    (venv / ".tapmig-complete").write_text("ok\n")
    return tmp_path / "cache"


@needs("patch", "ninja")
def test_build_then_cached_on_a_fake_tree(tree: Path, fake: Path, tmp_path: Path) -> None:
    patch = _write(tmp_path / "a.patch", GOOD)
    lines: list[str] = []
    binary = build_qemu(tree, [patch], cache=fake, jobs=1, log=lines.append)
    assert binary.parent.name == "bin" and (binary.parent.parent / "DONE").is_file()
    assert "0.0.1" in subprocess.run([binary], capture_output=True, text=True).stdout
    assert any(line.startswith("build: [1/1] 100%") for line in lines)
    assert not (binary.parent.parent / "bin" / "other").exists()
    assert [p.name for p in (fake / "qemu").iterdir() if ".tmp-" in p.name] == []
    again: list[str] = []
    assert build_qemu(tree, [patch], cache=fake, log=again.append) == binary
    assert again == [f"cached: {binary}"]
    assert cached_binary(tree, [patch], cache=fake) == binary
    assert cached_binary(tree, [], cache=fake) is None


def _build_failure(tree: Path, fake: Path, flag: str) -> BuildFailed:
    with pytest.raises(BuildFailed) as err:
        build_qemu(tree, [], cache=fake, extra_configure=[flag], jobs=1, log=print)
    assert err.value.exit_code == EXIT_FAILED  # a failed build, not bad input
    return err.value


def test_failed_configure_keeps_log_and_leaves_no_build(tree: Path, fake: Path) -> None:
    err = _build_failure(tree, fake, "--enable-broken")
    assert (err.step, err.status) == ("configure", 1)
    assert err.error_line == "ERROR: Dependency glib-2.0 not found"
    assert err.log_tail.splitlines()[-1] == err.error_line
    log = Path(err.log)
    assert log.name.endswith(".failed.log") and "glib-2.0" in log.read_text()
    assert sorted(p.name for p in (fake / "qemu").iterdir()) == sorted(
        [log.name, log.name.replace(".failed.log", ".lock")])


def test_pc_bios_meson_failure_hints_at_the_build_fix(tree: Path, fake: Path) -> None:
    err = _build_failure(tree, fake, "--enable-ds-bug")
    assert (err.step, err.status) == ("configure", 1)
    assert err.error_line.startswith("../x/pc-bios/meson.build:22:25: ERROR")
    # The fix is what the message is for: no field holds it.
    assert "--patch shared/qemu/build-fixes/debian-pc-bios-meson.patch" in str(err)


@needs("ninja")
def test_failed_ninja_names_the_target_and_keeps_the_log(tree: Path, fake: Path) -> None:
    err = _build_failure(tree, fake, "--enable-cc-bug")
    assert (err.step, err.status) == ("ninja", 1)  # ninja's own status for a failed edge
    assert err.error_line.endswith("qemu-system-x86_64")
    assert "cc: error: no such thing" in err.log_tail
    assert "cc: error: no such thing" in Path(err.log).read_text()
    assert not list((fake / "qemu").glob("*.tmp-*"))


@needs("ninja")
def test_parallel_builds_of_one_key_build_once(tree: Path, fake: Path) -> None:
    args = ["--source", str(tree), "--cache", str(fake)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "harness.qemu.build", *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert results[0][0] == results[1][0] and results[0][0].strip().endswith(
        "qemu-system-x86_64")
    assert sum("configure:" in err for _, err in results) == 1


def test_cli_failed_build_exits_1_with_one_error_line(tree: Path, fake: Path) -> None:
    """The exit code comes from the error class, as for `tapmig`: a failed build is 1."""
    proc = _cli("--source", str(tree), "--cache", str(fake), "--configure-arg=--enable-broken")
    assert (proc.returncode, proc.stdout) == (1, "")
    lines = proc.stderr.splitlines()  # progress lines, then the one error line
    assert lines[-1].startswith("build-qemu: error: configure failed (ERROR: Dependency glib")
    assert sum(line.startswith("build-qemu: error:") for line in lines) == 1
    assert "Traceback" not in proc.stderr


# --- variants: one more patch each, built in the base's kept tree ---------------------

VARIANT_CONFIGURE = r"""#!/bin/sh
# Stands in for QEMU's configure: the 'emulator' prints hw/net.c as it was when built,
# and fails to build when hw/net.c says BROKEN.
src=$(cd "$(dirname "$0")" && pwd)
cat > build.ninja <<NINJA
rule emu
  command = ! grep -q BROKEN \$in && (echo '#!/bin/cat'; cat \$in) > \$out && chmod +x \$out
build qemu-system-x86_64: emu $src/hw/net.c
NINJA
"""
# On the base alone, as GOOD is: it changes the line GOOD leaves alone.
OTHER = b"""--- a/hw/net.c
+++ b/hw/net.c
@@ -1,3 +1,3 @@
 int a;
 int b;
-int c;
+int c3;
"""


def _said(binary: Path) -> str:
    """What the fake emulator prints: hw/net.c as it was built."""
    return subprocess.run([binary], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def vtree(tree: Path, fake: Path) -> Path:
    """The fake tree with a configure whose emulator shows the source it was built from."""
    (tree / "configure").write_text(VARIANT_CONFIGURE)
    return tree


def test_variants_are_named_after_their_patches_and_listed_from_folders(
    tmp_path: Path
) -> None:
    folder = tmp_path / "qemu-variants"
    folder.mkdir()
    for name in ("b-two.diff", "a.one.patch"):
        _write(folder / name, GOOD)
    (folder / "README.md").write_text("not a patch")
    listed = list_variants([folder, folder / "a.one.patch"])
    assert [(v.name, v.patch.name) for v in listed] == [("a.one", "a.one.patch"),
                                                        ("b-two", "b-two.diff")]
    other = tmp_path / "other"
    other.mkdir()
    twin = _write(other / "b-two.patch", GOOD)
    assert _bad_input(lambda: list_variants([folder, twin])) == str(twin)
    assert _bad_input(lambda: list_variants([tmp_path / "nowhere.patch"])) == str(
        tmp_path / "nowhere.patch")
    for bad in ("base.patch", "two words.patch", "-dash.patch"):
        path = _write(tmp_path / bad, GOOD)
        assert _bad_input(lambda p=path: list_variants([p])) == str(path)  # type: ignore[misc]


def test_variant_key_follows_the_base_and_the_patch(tmp_path: Path) -> None:
    key = variant_key("base1", "sha1")
    assert key == variant_key("base1", "sha1") and len(key) == 24
    assert len({key, variant_key("base2", "sha1"), variant_key("base1", "sha2")}) == 3
    [v] = list_variants([_write(tmp_path / "v.patch", GOOD)])
    [planned] = plan_variants("base1", [v], tmp_path, "emu")
    assert planned.key == variant_key("base1", planned.sha256)
    assert (planned.binary, planned.done) == (tmp_path / planned.key / "bin" / "emu", False)
    planned.binary.parent.mkdir(parents=True)
    planned.binary.write_text("")
    assert not plan_variants("base1", [v], tmp_path, "emu")[0].done  # no DONE yet
    (tmp_path / planned.key / "DONE").write_text("{}")
    assert plan_variants("base1", [v], tmp_path, "emu")[0].done


def test_touched_files_come_from_the_diff_headers_only() -> None:
    mbox = _message(1, "net: first", GOOD) + b"""diff --git a/net/new.c b/net/new.c
--- /dev/null
+++ b/net/new.c
@@ -0,0 +1 @@
+int n;
--- a/net/gone.c
+++ /dev/null
@@ -1 +0,0 @@
---i;
--- a/hw/net.c
+++ b/hw/net.c
@@ -1 +1 @@
-int a;
+int a2;
"""
    assert touched_files(mbox) == ["hw/net.c", "net/new.c", "net/gone.c"]


def _variants(tree: Path, fake: Path, *patches: Path) -> tuple[dict[str, Path], list[str]]:
    lines: list[str] = []
    built = build_variants(tree, [], list(patches), cache=fake, jobs=1, log=lines.append)
    return built, lines


def _kept_tree(fake: Path) -> Path:
    [kept] = (fake / "qemu").glob("*.tree")
    return kept


@needs("patch", "ninja")
def test_each_variant_is_built_on_the_base_alone_in_one_kept_tree(
    vtree: Path, fake: Path, tmp_path: Path
) -> None:
    good, other = _write(tmp_path / "good.patch", GOOD), _write(tmp_path / "other.patch", OTHER)
    built, lines = _variants(vtree, fake, good, other)
    assert list(built) == ["base", "good", "other"]
    assert "int b;\nint c;" in _said(built["base"])
    assert "int b2;\nint c;" in _said(built["good"])
    assert "int b;\nint c3;" in _said(built["other"])
    assert sum("configure: done" in line for line in lines) == 1  # one tree for all three
    assert json.loads((_kept_tree(fake) / "TREE").read_text())["state"] == "clean"
    done = json.loads((built["good"].parent.parent / "DONE").read_text())
    assert done["variant"] == "good" and done["base"] == built["base"].parent.parent.name
    again, lines = _variants(vtree, fake, good, other)
    assert again == built and lines == [f"cached: {b}" for b in built.values()]
    assert cached_variant(vtree, [], other, cache=fake) == built["other"]
    assert cached_variant(vtree, [good], other, cache=fake) is None  # another base
    # Editing a variant rebuilds it alone, in the kept tree: no configure.
    _write(other, OTHER.replace(b"c3", b"c4"))
    rebuilt, lines = _variants(vtree, fake, other)
    assert rebuilt["other"] != built["other"] and "int c4;" in _said(rebuilt["other"])
    assert not any("configure:" in line for line in lines)


@needs("patch", "ninja")
def test_a_tree_left_patched_or_edited_is_made_again(
    vtree: Path, fake: Path, tmp_path: Path
) -> None:
    good, other = _write(tmp_path / "good.patch", GOOD), _write(tmp_path / "other.patch", OTHER)
    _variants(vtree, fake, good)
    kept = _kept_tree(fake)
    state = json.loads((kept / "TREE").read_text())
    (kept / "TREE").write_text(json.dumps({**state, "state": "variant"}))  # a killed build
    built, lines = _variants(vtree, fake, other)
    assert any("not clean" in line for line in lines)
    assert "int b;\nint c3;" in _said(built["other"])
    (kept / state["src"] / "hw" / "net.c").write_text("int a;\nint b;\nint c;\nedited\n")
    third = _write(tmp_path / "third.patch", GOOD.replace(b"b2", b"b5"))
    built, lines = _variants(vtree, fake, third)
    assert any("hw/net.c is not the base's" in line for line in lines)
    assert _said(built["third"]).endswith("int b5;\nint c;\n")


@needs("patch", "ninja")
def test_a_variant_that_does_not_apply_or_build_leaves_the_tree_clean(
    vtree: Path, fake: Path, tmp_path: Path
) -> None:
    good, bad = _write(tmp_path / "good.patch", GOOD), _write(tmp_path / "bad.patch", BAD)
    _variants(vtree, fake, good)
    with pytest.raises(UsageError, match=r"bad.patch does not apply: hw/net.c \(hunk FAILED"):
        _variants(vtree, fake, bad)
    broken = _write(tmp_path / "broken.patch", GOOD.replace(b"int b2;", b"BROKEN"))
    with pytest.raises(BuildFailed) as err:
        _variants(vtree, fake, broken)
    assert err.value.step == "ninja" and Path(err.value.log).name.endswith(".failed.log")
    assert json.loads((_kept_tree(fake) / "TREE").read_text())["state"] == "clean"
    assert cached_variant(vtree, [], bad, cache=fake) is None
    assert cached_variant(vtree, [], broken, cache=fake) is None
    other = _write(tmp_path / "other.patch", OTHER)
    built, lines = _variants(vtree, fake, other)  # the same tree, no configure
    assert not any("configure:" in line for line in lines)
    assert "int b;\nint c3;" in _said(built["other"])


@needs("patch", "ninja")
def test_cli_prints_one_name_and_path_per_binary(vtree: Path, fake: Path, tmp_path: Path) -> None:
    folder = tmp_path / "variants"
    folder.mkdir()
    _write(folder / "good.patch", GOOD)
    proc = _cli("--source", str(vtree), "--cache", str(fake), "--variant", str(folder))
    assert proc.returncode == 0, proc.stderr
    lines = [line.split(" ") for line in proc.stdout.splitlines()]
    assert [name for name, _ in lines] == ["base", "good"]
    assert "int b2;" in _said(Path(lines[1][1]))
