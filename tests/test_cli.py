"""Bad input and unusable hosts: one line that says what to do, and exit 2, before any run.

Each case runs the real `tapmig` command; nothing is mocked. Where only the
command's answer matters it is called through its entry point in this process
(tests.support.call_tapmig: nothing starts before the refusal); what only a
process shows (`python -m harness`, a closed output pipe, a private mount
namespace where /dev/net/tun is hidden) runs in a subprocess. The host conditions
are made real too: a PATH without ping, the hidden /dev/net/tun. (Unprivileged
users are in test_rootless.py.) Also the command's own surface: --version, --help,
--json, stdin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import harness
from harness.cache import default_cache
from harness.errors import UsageError
from harness.guest.spec import Guest
from harness.qemu import accel
from harness.report.table import format_record
from harness.run import setup
from harness.run.config import Config
from harness.run.setup import check_traffic
from harness.testing.plugin import missing
from harness.vocabulary import AccelChoice
from tests.support import REPO, call_tapmig, run_tapmig
from tests.support import one_line_error as _one_line_error
from tests.support.calls import count_calls
from tests.support.records import record, report_file

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


@pytest.fixture
def root(pytestconfig: pytest.Config) -> None:
    """Root, to drop privileges or make a mount namespace: a skip, or a failure where
    the run requires root (--tapmig-require)."""
    if os.geteuid() != 0:
        missing(pytestconfig, "root", "needs root to drop privileges or to make a mount "
                                      "namespace")


needs_root = pytest.mark.usefixtures("root")


PING_LOG = REPO / "tests" / "data" / "ping" / "outage-tapmig.log"
tapmig = call_tapmig


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, one line, nothing on stdout: refused before anything ran."""
    _one_line_error(res, *needles, code=2)
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == "", res.stderr


def test_missing_qemu() -> None:
    one_line_error(tapmig("run", "--qemu", "/nonexistent/qemu"), "not found", "--qemu")


def test_not_a_qemu() -> None:
    one_line_error(tapmig("run", "--qemu", "/bin/true"), "not a QEMU", "--qemu")


@needs_qemu
def test_local_mode_on_a_qemu_without_the_series() -> None:
    assert QEMU is not None
    res = tapmig("run", "--qemu", QEMU, "--mode", "local")
    one_line_error(res, "cannot do local migration", "incoming-fds")


@needs_qemu
def test_queues_out_of_range() -> None:
    assert QEMU is not None
    one_line_error(tapmig("run", "--qemu", QEMU, "--queues", "0"), "--queues 0")


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"vcpus": 0}, "--vcpus 0"), ({"flows": 65}, "--flows 65"),
    ({"flows": 8, "flow_interval": 0.0001}, "flow interval"),
])
def test_bad_traffic_options_are_refused(kwargs: dict[str, float], word: str) -> None:
    """The traffic options as Config gets them, refused before anything starts."""
    with pytest.raises(UsageError, match=re.escape(word)):
        check_traffic(Config("qemu", **kwargs))  # type: ignore[arg-type]


@needs_qemu
@needs_root
def test_ping_missing(tmp_path: Path) -> None:
    assert QEMU is not None
    bare = tmp_path / "bin"
    bare.mkdir()  # a PATH with no ping on it
    one_line_error(tapmig("run", "--qemu", QEMU, env={"PATH": str(bare)}), "ping not found")


@needs_qemu
@needs_root
def test_no_dev_net_tun(tmp_path: Path) -> None:
    """Hide /dev/net/tun under a tmpfs, in a private mount namespace of this command only."""
    assert QEMU is not None
    script = ("mount --make-rprivate / && mount -t tmpfs none /dev/net && "
              f"exec {sys.executable} -m harness.cli.main run --qemu {QEMU}")
    res = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    one_line_error(res, "/dev/net/tun is missing")


def test_analyze_rejects_a_file_that_is_no_ping_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("hello\n")
    one_line_error(tapmig("analyze", str(log)), "no `ping -D -O` lines")


def test_analyze_bad_window(tmp_path: Path) -> None:
    log = tmp_path / "ping.log"
    log.write_text("[1.000000] 64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.1 ms\n")
    one_line_error(tapmig("analyze", str(log), "--window", "x"), "--window")


def test_format_record_shows_the_four_numbers() -> None:
    rec = record(mode="local", qemu_version="10.2.2", accel="tcg", blackout_ms=12.5, lost=3,
                 downtime_ms=2.0, stop_resume_ms=8.25, resolution_ms=1.1, interval_ms=1.0)
    text = format_record(rec)
    for needle in ("12.5 ms", "lost packets    3", "QMP downtime    2 ms", "8.25 ms"):
        assert needle in text


def test_bad_accelerator_from_the_environment() -> None:
    one_line_error(tapmig("run", env={"TAPMIG_ACCEL": "bogus"}), "unknown accelerator 'bogus'")


@needs_qemu
@needs_root
def test_kvm_required_where_kvm_cannot_boot_the_guest(tapmig_guest: Guest) -> None:
    """--accel kvm must refuse, in one line, a host where auto would fall back to TCG."""
    assert QEMU is not None
    chosen, _ = accel.choose("auto", QEMU, tapmig_guest, default_cache(), log=print)
    if chosen == "kvm":
        pytest.skip("KVM boots the guest on this host, so --accel kvm is not refused")
    one_line_error(tapmig("run", "--qemu", QEMU, "--accel", "kvm"), "--accel kvm, but",
                   "use --accel auto or tcg")


@pytest.mark.kvm
@pytest.mark.qemu_independent
@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_a_run_checks_its_variant_and_the_host_once(monkeypatch: pytest.MonkeyPatch,
                                                     tapmig_qemu: str,
                                                     tapmig_accel: AccelChoice) -> None:
    """`tapmig run` checks the host and its variant in its preflight, before any table,
    and the run it hands the Setup to takes the verdict from it, not from a check of
    its own."""
    calls = count_calls(monkeypatch, setup, "check_variant", "check_host")
    done = tapmig("run", "--qemu", tapmig_qemu, "--accel", tapmig_accel)
    assert done.returncode == 0, done.stderr
    assert calls == Counter(check_variant=1, check_host=1)


# --- the command's own surface -------------------------------------------------------------


def test_version_from_the_script_and_from_python_m_harness() -> None:
    assert tapmig("--version").stdout == f"tapmig {harness.__version__}\n"
    done = subprocess.run([sys.executable, "-m", "harness", "--version"], capture_output=True,
                          text=True, timeout=60, cwd="/", check=False)
    assert (done.returncode, done.stdout) == (0, f"tapmig {harness.__version__}\n")


def test_help_opens_for_users_and_lists_the_exit_codes() -> None:
    text = tapmig("--help").stdout
    description = text.split("\n\n")[1]
    assert description.startswith("tapmig proves that a virtio-net guest keeps its network")
    codes = text[text.index("exit codes:"):]
    for code in ("0", "1", "2", "130", "141"):
        assert f"\n  {code} " in codes


@pytest.mark.parametrize("where", ["before", "after"])
def test_cache_is_accepted_before_and_after_the_subcommand(tmp_path: Path, where: str) -> None:
    cache = tmp_path / "elsewhere"
    args = ["assets", "list", "--json"]
    args = ["--cache", str(cache), *args] if where == "before" else [*args, "--cache", str(cache)]
    done = tapmig(*args)
    assert done.returncode == 0, done.stderr
    paths = [a["path"] for a in json.loads(done.stdout)["assets"] if a["path"]]
    assert paths and all(p.startswith(f"{cache}/assets/") for p in paths)


def test_assets_list_json_matches_the_manifest() -> None:
    listing = json.loads(tapmig("assets", "list", "--json").stdout)
    assert listing["default"] == "embedded"
    by_name = {a["name"]: a for a in listing["assets"]}
    assert by_name["embedded"]["url"] is None and by_name["embedded"]["cached"] is None
    assert by_name["fedora-kernel"]["sha256"].startswith("d4738d03")
    assert listing["guests"]["fedora"] == {"kernel": "fedora-kernel", "initrd": "fedora-initrd"}


def test_analyze_reads_stdin() -> None:
    """A process's stdin: `-` is /dev/stdin, so this one needs a subprocess."""
    from_file = tapmig("analyze", str(PING_LOG))
    from_stdin = run_tapmig("analyze", "-", input=PING_LOG.read_text())
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == json.loads(from_file.stdout)
    assert json.loads(from_stdin.stdout)["blackout_ms"] is not None


@pytest.fixture(scope="module")
def hole() -> dict[str, float]:
    """The outage of the captured log, as `tapmig analyze` finds it without a window."""
    found: dict[str, float] = json.loads(tapmig("analyze", str(PING_LOG)).stdout)
    return found


def test_analyze_finds_the_outage_in_its_window(hole: dict[str, float]) -> None:
    done = tapmig("analyze", str(PING_LOG), "--window",
                  f"{hole['blackout_start']},{hole['blackout_end']}")
    assert json.loads(done.stdout)["blackout_ms"] == hole["blackout_ms"]


@pytest.mark.parametrize(("window", "needle"), [
    ("{b},{a}", "STOP is after RESUME"),
    ("nan,{b}", "not a number"),
    ("{a},inf", "not a number"),
    ("{a},{b},{b}", "two unix timestamps"),
    ("1.0,2.0", "no gap between replies"),
], ids=["reversed", "nan", "inf", "three", "outage-missing"])
def test_analyze_refuses_a_window_that_cannot_be_right(hole: dict[str, float], window: str,
                                                       needle: str) -> None:
    text = window.format(a=hole["blackout_start"], b=hole["blackout_end"])
    one_line_error(tapmig("analyze", str(PING_LOG), "--window", text), "--window", needle)


def test_a_closed_output_pipe_is_no_traceback() -> None:
    """`tapmig analyze LOG | head`: the reader is gone before tapmig writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "harness.cli.main", "analyze", str(PING_LOG)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              cwd=REPO, check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_compare_refuses_unlike_runs_unless_allowed(tmp_path: Path) -> None:
    base = report_file(tmp_path / "kvm", [10.0, 11.0, 12.0, 10.5, 11.5], accel="kvm")
    cur = report_file(tmp_path / "tcg", [40.0, 41.0, 42.0, 40.5, 41.5], accel="tcg")
    one_line_error(tapmig("compare", "--baseline", str(base), "--current", str(cur)),
                   "not comparable", "accelerator kvm vs tcg", "--allow-mismatch")
    done = tapmig("compare", "--baseline", str(base), "--current", str(cur),
                  "--allow-mismatch", "--json")
    assert done.returncode == 1, done.stderr
    verdict = json.loads(done.stdout)
    assert (verdict["verdict"], verdict["differences"]) == ("REGRESSED",
                                                            ["accelerator kvm vs tcg"])
    assert {j["metric"] for j in verdict["judgements"] if j["regressed"]} == {
        "blackout_ms", "downtime_ms"}


def test_compare_says_when_intervals_are_just_min_max(tmp_path: Path) -> None:
    base = report_file(tmp_path / "a", [10.0, 11.0, 12.0], accel="tcg")
    cur = report_file(tmp_path / "b", [10.5, 11.5, 12.5], accel="tcg")
    done = tapmig("compare", "--baseline", str(base), "--current", str(cur))
    assert done.returncode == 0, done.stderr
    assert "rest on intervals that are just [min, max]" in done.stdout
