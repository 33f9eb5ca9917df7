"""The pytest plugin as another project sees it: a test suite in a temporary directory,
run by a real pytest that finds tapmig through its `pytest11` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.qemu.capabilities import query_capabilities
from harness.testing.plugin import qemus
from tests.support import REPO
from tests.support.wheel import Installed

FOREIGN_TESTS = '''
import subprocess
import pytest
from harness.run.config import Config


def test_qemus(tapmig_qemu, tapmig_accel):
    print("QEMU", tapmig_qemu, tapmig_accel)


def test_pair(tapmig_pair):
    cfg = tapmig_pair.config(mode="new-tap")
    print("PAIR", tapmig_pair.source.version, "->", tapmig_pair.target.version,
          cfg.qemu, cfg.target_qemu)


@pytest.fixture(scope="module")
def spawned():
    """Children a test leaves running, killed only after every test's teardown."""
    procs = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_leaves_a_child(spawned):
    spawned.append(subprocess.Popen(["sleep", "30"]))


@pytest.mark.usefixtures("tapmig_leak_check")
def test_leaves_a_child_checked(spawned):
    spawned.append(subprocess.Popen(["sleep", "30"]))


@pytest.mark.kvm
def test_marked():
    pass


def test_records(tapmig_run):
    assert tapmig_run(Config(qemu="/nonexistent/qemu")).status == "failed"


def test_without_root(pytestconfig):
    from harness.testing.plugin import missing
    missing(pytestconfig, "root", "this test pretends the host has no root")
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project of its own: no conftest, no config, only a test file."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "test_foreign.py").write_text(FOREIGN_TESTS)
    return root


def pytest_in(where: Path, *args: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=where, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


def test_each_qemu_is_a_parameter_and_accel_passes_through(project: Path) -> None:
    done = pytest_in(project, "-s", "-k", "qemus", "--tapmig-qemu=/a/qemu",
                     "--tapmig-qemu=/b/qemu", "--tapmig-accel", "tcg")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "QEMU /a/qemu tcg" in done.stdout and "QEMU /b/qemu tcg" in done.stdout
    assert "2 passed" in done.stdout
    # The short spellings are tapmig's own suite's (its conftest.py), not the plugin's.
    bare = pytest_in(project, "-k", "qemus", "--qemu=/a/qemu")
    assert bare.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --qemu=/a/qemu" in bare.stderr


def test_the_pair_is_each_qemu_to_the_target_qemu(project: Path,
                                                 pytestconfig: pytest.Config) -> None:
    """A live update's fixture: real capabilities of both binaries, a Config between them
    (this suite's two --qemu: the first is the source, the second the target)."""
    binaries = [query_capabilities(q) for q in qemus(pytestconfig)]
    if len(binaries) < 2:
        pytest.skip("one --qemu only: no second binary to be the target (ci/test gives two)")
    old, new = binaries[:2]
    done = pytest_in(project, "-s", "-k", "pair", f"--tapmig-qemu={old.qemu}",
                     f"--tapmig-target-qemu={new.qemu}")
    assert done.returncode == 0, done.stdout[-2000:]
    assert f"PAIR {old.version} -> {new.version} {old.qemu} {new.qemu}" in done.stdout


def test_qemu_and_accel_default_to_the_environment(project: Path) -> None:
    done = pytest_in(project, "-s", "-k", "qemus",
                     env={"TAPMIG_QEMU": f"/a/qemu{os.pathsep}/b/qemu", "TAPMIG_ACCEL": "kvm"})
    assert "QEMU /a/qemu kvm" in done.stdout and "QEMU /b/qemu kvm" in done.stdout
    bad = pytest_in(project, "-k", "qemus", env={"TAPMIG_ACCEL": "bogus"})
    assert bad.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown accelerator 'bogus'" in bad.stderr


def test_leak_check_is_offered_not_imposed(project: Path) -> None:
    done = pytest_in(project, "-v", "-k", "leaves_a_child")
    assert "test_foreign.py::test_leaves_a_child PASSED" in done.stdout
    assert "test_foreign.py::test_leaves_a_child_checked ERROR" in done.stdout
    assert "test leaked: ['process " in done.stdout and "(sleep)" in done.stdout


def test_kvm_marker_is_registered(project: Path) -> None:
    done = pytest_in(project, "--strict-markers", "-m", "kvm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_qemu_with_a_space_is_refused_where_pytest_misreads_it(project: Path,
                                                               tmp_path: Path) -> None:
    """pytest picks its rootdir and config before plugins load, from `--tapmig-qemu PATH`'s
    PATH too: where that loses the project's config, the run is refused in one line that
    gives the spelling that works, before anything is written next to the binary."""
    (project / "pytest.ini").write_text("[pytest]\nmarkers = mine: a marker of its own\n")
    qemu = tmp_path / "bin" / "qemu-system-x86_64"
    qemu.parent.mkdir()
    qemu.write_text("")
    done = subprocess.run([sys.executable, "-m", "pytest", "--tapmig-qemu", str(qemu)],
                          cwd=project, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"write --tapmig-qemu={qemu}" in done.stderr
    assert sorted(p.name for p in qemu.parent.iterdir()) == [qemu.name]
    # A test path as well leads pytest to the project's config: nothing to refuse.
    fine = pytest_in(project, "--tapmig-qemu", str(qemu), "test_foreign.py", "-k", "qemus")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "configfile: pytest.ini" in fine.stdout
    joined = pytest_in(project, f"--tapmig-qemu={qemu}", "-k", "qemus")
    assert joined.returncode == 0, joined.stdout + joined.stderr


def test_a_missing_prerequisite_skips_unless_the_run_requires_it(project: Path) -> None:
    """missing(): a skip naming why, or, under --tapmig-require (or $TAPMIG_REQUIRE),
    a failure naming what is required."""
    skipped = pytest_in(project, "-rs", "-k", "without_root")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert "this test pretends the host has no root" in skipped.stdout
    for required in (["--tapmig-require=root"], []):
        env = {} if required else {"TAPMIG_REQUIRE": "root"}
        failed = pytest_in(project, "-k", "without_root", *required, env=env)
        assert failed.returncode == pytest.ExitCode.TESTS_FAILED, failed.stdout
        assert ("required root is missing (--tapmig-require): this test pretends the host "
                "has no root") in failed.stdout


def test_required_guest_that_cannot_be_built_stops_the_run_naming_it(project: Path) -> None:
    """A cache that cannot be written is a host without the guest's build: with the
    guest required, the run stops before any test, saying so."""
    done = pytest_in(project, "--tapmig-require=guest", env={"TAPMIG_CACHE": "/proc/nope"})
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "required prerequisites are missing (--tapmig-require=guest)" in said
    assert "guest: cannot build the embedded guest here" in said and "/proc/nope" in said
    assert " passed" not in said


def test_required_series_fails_where_no_qemu_has_it(project: Path) -> None:
    """series: one --tapmig-qemu at least must speak the series. Debian's QEMU does not, and
    /bin/true is no QEMU at all: each is named with what it lacks, and nothing runs."""
    done = pytest_in(project, "--tapmig-require=series", "--tapmig-qemu=/bin/true",
                     "--tapmig-qemu=/usr/bin/qemu-system-x86_64")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "series: no --tapmig-qemu has the local-migration series: /bin/true: " in said
    assert "; /usr/bin/qemu-system-x86_64 " in said
    bad = pytest_in(project, "--tapmig-require=guest,gpu")
    assert bad.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--tapmig-require: unknown 'gpu'" in bad.stderr


@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_run_factory_keeps_each_record(project: Path, tmp_path: Path) -> None:
    records = tmp_path / "records"
    done = pytest_in(project, "-k", "records", f"--tapmig-records={records}")
    assert done.returncode == 0, done.stdout + done.stderr
    [kept] = records.iterdir()
    assert kept.name == "test_records.json"
    assert json.loads(kept.read_text())["status"] == "failed"


@pytest.mark.kvm
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_the_installed_wheel_brings_the_plugin(project: Path, tapmig_installed: Installed,
                                               request: pytest.FixtureRequest) -> None:
    """Outside the clone, from the wheel alone, the README's example runs against every
    QEMU under test: a real local migration where the QEMU has the series, a skip that
    names what is missing where it has not."""
    (project / "test_readme_example.py").write_text(README_EXAMPLE)
    under_test = qemus(request.config)
    done = tapmig_installed.run("pytest", "-p", "no:cacheprovider", "-rs", "--strict-markers",
                                "-m", "kvm", "test_readme_example.py",
                                *(f"--tapmig-qemu={q}" for q in under_test), cwd=project,
                                timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with_series = [q for q in under_test if query_capabilities(q).interface != "none"]
    assert f"{len(with_series)} passed" in done.stdout or not with_series, done.stdout
    if len(with_series) < len(under_test):
        assert "lacks the series" in done.stdout, done.stdout


# Kept word for word in README.md's "Using the pytest plugin" section; a test checks that.
README_EXAMPLE = '''\
import pytest
from harness.run.config import Config


@pytest.mark.kvm
def test_local_migration_keeps_the_network(tapmig_qemu, tapmig_capabilities, tapmig_run):
    if tapmig_capabilities.interface == "none":
        pytest.skip(f"{tapmig_qemu} lacks the series: {tapmig_capabilities.verdict()}")
    record = tapmig_run(Config(qemu=tapmig_qemu, mode="local", queues=4))
    assert record.status == "ok", record.error
    assert record.blackout_ms is not None and record.blackout_ms < 500
'''


def test_readme_shows_the_example() -> None:
    assert README_EXAMPLE in (REPO / "README.md").read_text()


# A plugin of another project that owns the bare `--qemu`, installed as pytest finds
# any installed plugin: a distribution on sys.path with a pytest11 entry point.
THEIR_PLUGIN = '''
def pytest_addoption(parser):
    parser.addoption("--qemu", default="their-qemu", help="their own QEMU")
'''
THEIR_TEST = '''
def test_both(pytestconfig, tapmig_qemu):
    print("THEIRS", pytestconfig.getoption("--qemu"), "OURS", tapmig_qemu)
'''


def test_the_installed_wheel_starts_beside_a_plugin_with_its_own_qemu(
        tapmig_installed: Installed, tmp_path: Path) -> None:
    """tapmig's plugin loads into every pytest of its venv, so its options keep to their
    namespace: next to another plugin with a bare `--qemu`, pytest starts, and each
    option reaches its own plugin."""
    site = tmp_path / "site"
    (site / "their_qemu-1.0.dist-info").mkdir(parents=True)
    (site / "their_qemu.py").write_text(THEIR_PLUGIN)
    (site / "their_qemu-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: their-qemu\nVersion: 1.0\n")
    (site / "their_qemu-1.0.dist-info" / "entry_points.txt").write_text(
        "[pytest11]\ntheir_qemu = their_qemu\n")
    project = tmp_path / "theirs"
    project.mkdir()
    (project / "test_both.py").write_text(THEIR_TEST)
    env = {"PYTHONPATH": str(site)}
    shown = tapmig_installed.run("pytest", "-p", "no:cacheprovider", "--help", cwd=project,
                                 env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "--qemu=QEMU" in shown.stdout and "their own QEMU" in shown.stdout
    assert "--tapmig-qemu=PATH" in shown.stdout and "--tapmig-accel" in shown.stdout
    done = tapmig_installed.run("pytest", "-p", "no:cacheprovider", "-s", "--qemu=/their/qemu",
                                "--tapmig-qemu=/our/qemu", cwd=project, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "THEIRS /their/qemu OURS /our/qemu" in done.stdout
