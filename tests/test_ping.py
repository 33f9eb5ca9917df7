"""harness.analysis.ping on real captured logs and on tiny hand-made ones.

How tests/data/ping/ was captured (once, by hand, with a throwaway script that
is not committed), as root on Linux 6.18 with iputils 20221126:

- Two namespaces, tapmig-capture-ping and tapmig-capture-peer, joined by a veth
  pair: veth0 (192.168.77.1/24) in the first, veth-peer (192.168.77.2/24) in the
  second. Nothing was configured in, or pinged from, the root namespace; both
  namespaces were deleted in a `finally` after each capture.
- Each probe ran in tapmig-capture-ping through `nsenter --net=/run/netns/...`
  with stdout to the log, and was stopped with SIGINT so that it wrote its
  summary. One ARP-warming `ping -c 1` ran before each capture.
- clean-iputils.log: `ping -D -O -n -i 0.001 192.168.77.2` for 1.5 s.
- outage-iputils.log: the same, but 0.5 s in, `ip -n tapmig-capture-peer link set
  veth-peer down`, sleep 0.3 s, `... up`, then 0.7 s more.
- queued-iputils.log: the kernel here has no netem (and no plug qdisc), and
  deleting a qdisc drops whatever it holds. So the peer got `tc qdisc add dev
  veth-peer root tbf rate 1gbit burst 1mb limit 10mb` before the capture. The
  "outage" was `tc qdisc change ... tbf rate 8bit burst 100 limit 10mb` (the
  replies queue in tbf: nothing is dropped), then 0.3 s later a change back to
  1gbit, which lets the held replies out late.
- dropped-iputils.log: the same tbf, but the outage was a change to `limit 1`
  (bytes), so every reply is dropped while the link stays up; then back.
- outage-tapmig.log: `python -m harness.probes.icmp -i 0.001 192.168.77.2` (with
  PYTHONPATH=/work/main: tapmig's own prober, which also prints a "sent" line per request)
  through the same link-down outage as outage-iputils.
- Each outage has a JSON sidecar of time.time() values taken by the capture
  script: down_issued/down_done just before/after the command that starts the
  outage, up_issued/up_done around the one that ends it; "down" is down_done and
  "up" is up_issued, so [down, up] lies wholly inside the real outage.

The counts asserted below were taken from the logs with grep -c ("bytes from",
"no answer yet") and awk (replies with time= above 5 ms) right after capturing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.analysis.ping import Analysis, PingLog, analyze, analyze_file, parse, send_times
from harness.errors import TapmigError, UsageError
from harness.probes.driver import Pinger

DATA = Path(__file__).parent / "data" / "ping"


def load(name: str) -> PingLog:
    return parse((DATA / f"{name}.log").read_text())


def sidecar(name: str) -> dict[str, float]:
    raw = json.loads((DATA / f"{name}.json").read_text())
    return {k: float(v) for k, v in raw.items() if k != "how"}


def reply(ts: float, seq: int, rtt: float, host: str = "10.0.0.2", dup: bool = False) -> str:
    return (f"[{ts:.6f}] 64 bytes from {host}: icmp_seq={seq} ttl=64 time={rtt} ms"
            + (" (DUP!)" if dup else ""))


def no_answer(ts: float, seq: int) -> str:
    return f"[{ts:.6f}] no answer yet for icmp_seq={seq}"


# --- real logs: what parse() reads ------------------------------------------------------


# (log, replies, "no answer yet" lines, transmitted per the summary line)
COUNTS = [
    ("clean-iputils", 1498, 0, 1498),
    # iputils sets IP_RECVERR, so while the link is down every send fails with ENOBUFS;
    # it retries every ~10 ms without counting or printing anything (seen with strace).
    ("outage-iputils", 1204, 0, 1204),
    ("queued-iputils", 1228, 30, 1228),
    ("dropped-iputils", 1160, 31, 1191),
    # The prober sets no IP_RECVERR: its sends "succeed" and are dropped, one line each.
    ("outage-tapmig", 1169, 302, 1471),
]


@pytest.mark.parametrize(("name", "replies", "unanswered", "tx"), COUNTS)
def test_parse_counts_real_logs(name: str, replies: int, unanswered: int, tx: int) -> None:
    log = load(name)
    assert sum(p.rtt_ms is not None for p in log.lines) == replies
    assert sum(p.rtt_ms is None and not p.error for p in log.lines) == unanswered
    assert not any(p.error or p.duplicate for p in log.lines)
    assert log.transmitted == tx
    # Every request ping counted shows up at least once, from seq 1 on.
    assert {p.seq for p in log.lines} == set(range(1, tx + 1))


def test_parse_reads_timestamp_seq_and_rtt() -> None:
    first = load("clean-iputils").lines[0]
    # The log's first data line: [1795650924.124994] ... icmp_seq=1 ttl=64 time=0.014 ms
    assert (first.ts, first.seq, first.rtt_ms) == (1795650924.124994, 1, 0.014)


def test_prober_log_carries_every_send_time() -> None:
    log = load("outage-tapmig")
    assert sorted(log.sent) == list(range(1, 1472))
    # A reply's RTT is measured from that very send time (print rounding aside).
    for p in log.lines:
        if p.rtt_ms is not None:
            assert p.ts - p.rtt_ms / 1000 == pytest.approx(log.sent[p.seq], abs=5e-6)
    # iputils prints no such line.
    assert load("outage-iputils").sent == {}


def test_analyze_file_finds_the_recorded_outage_and_refuses_what_is_no_log(
        tmp_path: Path) -> None:
    """A log file as recorded: the outage analyze_file finds lies where the recording's
    sidecar says the link was down (the bounds of test_blackout_lies_around_the_
    recorded_outage, on what the file gives). A file it cannot read, or that holds no
    ping line, is refused naming the file."""
    t = sidecar("outage-tapmig")
    a = analyze_file(DATA / "outage-tapmig.log")
    assert a.blackout_start is not None and a.blackout_end is not None
    assert t["down_issued"] - START_SLACK <= a.blackout_start <= t["down"] + START_SLACK
    assert t["up"] <= a.blackout_end <= t["up_done"] + SPACING["outage-tapmig"] + END_SLACK
    with pytest.raises(UsageError, match=r"^cannot read ping log .*/missing\.log: "):
        analyze_file(tmp_path / "missing.log")
    (tmp_path / "notes.log").write_text("no ping here\n")
    with pytest.raises(UsageError, match=r"notes\.log: no `ping -D -O` lines found"):
        analyze_file(tmp_path / "notes.log")


# --- real logs: what analyze() finds ----------------------------------------------------


def test_clean_log_has_no_outage() -> None:
    a = analyze(load("clean-iputils"))
    assert (a.replies, a.transmitted, a.lost, a.late_replies) == (1498, 1498, 0, 0)
    assert a.no_answer_lines == 0 and a.first_unanswered is None
    assert a.interval_ms is not None and 0.95 <= a.interval_ms <= 1.1
    # The "blackout" of a clean run is just its widest gap between replies (1.381 ms).
    assert a.blackout_ms is not None and a.blackout_ms < 5


MS = 1e-3
# The last reply before the hole may trail `down` (taken once the command returned):
# a reply already delivered is printed a fraction of a ms later, and the tbf change
# refills the bucket with 100 bytes, which lets exactly one more 98-byte reply out
# (one 1 ms probe later). Before the outage probes run at 1 ms, so the last reply
# is also at most ~1 ms older than down_issued.
START_SLACK = 2 * MS
# After the outage ends, the first reply waits for the next probe (see SPACING), the
# peer's ARP re-resolution (a link-down flushes its neighbour table; sub-ms on veth)
# and the wakeup and printing.
END_SLACK = 3 * MS
# How often a prober tries while no reply comes. The tapmig prober keeps 1 ms (its
# widest send spacing in the log is 1.31 ms). iputils sleeps 10 ms while a reply is
# outstanding, and retries a send that failed with ENOBUFS after 10 ms (16 ms apart
# under strace). A tbf queue is only drained when the next packet is enqueued, so
# its release also waits for the next probe.
SPACING = {"outage-iputils": 16 * MS, "queued-iputils": 10.5 * MS,
           "dropped-iputils": 10.5 * MS, "outage-tapmig": 1.5 * MS}
OUTAGES = sorted(SPACING)


@pytest.mark.parametrize("name", OUTAGES)
def test_blackout_lies_around_the_recorded_outage(name: str) -> None:
    t = sidecar(name)
    a = analyze(load(name))
    assert a.blackout_start is not None and a.blackout_end is not None
    assert a.blackout_ms is not None
    assert t["down_issued"] - START_SLACK <= a.blackout_start <= t["down"] + START_SLACK
    # No reply crosses a link that is down or leaves a queue that holds it before the
    # command that ends the outage even starts: no slack needed.
    assert a.blackout_end >= t["up"]
    assert a.blackout_end <= t["up_done"] + SPACING[name] + END_SLACK
    # Hence the length: at least the time the outage was certainly on (about 300 ms);
    # at most the time it was possibly on, plus one probe either side, plus slack.
    outage = t["up"] - t["down"]
    longest = t["up_done"] - t["down_issued"] + MS + SPACING[name] + END_SLACK
    assert outage * 1000 <= a.blackout_ms <= longest * 1000
    assert a.blackout_ms <= 1000 * outage + 30  # and never over 30 ms past the outage


@pytest.mark.parametrize("name", OUTAGES)
def test_window_over_the_outage_selects_it(name: str) -> None:
    t = sidecar(name)
    log = load(name)
    assert analyze(log, (t["down"], t["up"])) == analyze(log)


@pytest.mark.parametrize("name", OUTAGES)
def test_window_away_from_the_outage_ignores_it(name: str) -> None:
    log = load(name)
    # 0.2 s into the capture, well before the outage at 0.5 s: only ordinary gaps.
    at = log.lines[0].ts + 0.2
    a = analyze(log, (at, at))
    assert a.blackout_start is not None and a.blackout_start <= at
    assert a.blackout_ms is not None and a.blackout_ms < 5


# resolution_ms is the probe spacing at the hole's two edges: how far the true start
# and end of the outage can be from the figure.


def test_link_down_seen_by_iputils() -> None:
    a = analyze(load("outage-iputils"))
    # Its failed sends were neither counted nor printed: 0 loss, no "no answer" line.
    assert (a.lost, a.no_answer_lines, a.late_replies) == (0, 0, 0)
    # Not one probe is visible inside the hole, so the edges are known only to the hole
    # itself (303 ms): the log cannot say when the link went or came back.
    assert a.resolution_ms is not None and a.blackout_ms is not None
    assert a.resolution_ms >= 5
    assert a.resolution_ms == pytest.approx(a.blackout_ms, abs=1.0)


def test_dropped_replies_seen_by_iputils() -> None:
    a = analyze(load("dropped-iputils"))
    # Seqs 499-529 were sent and never answered: one "no answer yet" line each.
    assert (a.replies, a.transmitted, a.lost, a.late_replies) == (1160, 1191, 31, 0)
    assert a.no_answer_lines == 31
    # iputils sleeps 10 ms while a reply is outstanding, so the end of the outage is
    # sampled every 10 ms (10.15 ms here; 11.1 at the start, where the first unanswered
    # request, sent 1 ms after the last answered one, has no line of its own).
    assert a.resolution_ms is not None and 10 <= a.resolution_ms <= 12
    # That coarse end edge is why this hole is 318 ms for a 300 ms outage.
    assert a.blackout_ms is not None and a.blackout_ms > 310


def test_queued_requests_are_late_replies_not_loss() -> None:
    a = analyze(load("queued-iputils"))
    assert (a.replies, a.transmitted, a.lost) == (1228, 1228, 0)
    # Every request sent while tbf held the replies: seqs 504-533, RTTs 10.3-307 ms.
    assert a.late_replies == 30 and a.no_answer_lines == 30
    assert a.late_max_rtt_ms == 307.0  # iputils prints 3 significant digits: "time=307 ms"
    assert a.median_rtt_ms is not None and a.median_rtt_ms < 0.1
    # Sharp edges despite iputils: the first held request (504) left 0.921 ms after the
    # last prompt one, still at the 1 ms pace, and the hole ends with the held replies
    # themselves, not with a later probe.
    assert a.resolution_ms == pytest.approx(0.921)
    assert a.interval_ms is not None and 1.0 < a.interval_ms < 1.5


def test_link_down_seen_by_the_tapmig_prober() -> None:
    a = analyze(load("outage-tapmig"))
    assert (a.replies, a.transmitted, a.lost, a.late_replies) == (1169, 1471, 302, 0)
    assert a.no_answer_lines == 302
    # It keeps its pace through the outage and logs every send, so both edges are known
    # to one interval (1.008 ms) where iputils knows them to 10-300 ms: the reason it
    # exists.
    assert a.resolution_ms is not None and a.resolution_ms <= 2.0
    assert a.resolution_ms == pytest.approx(1.0, abs=0.1)
    assert a.interval_ms is not None and 0.95 <= a.interval_ms <= 1.05
    t = sidecar("outage-tapmig")
    # Its "no answer yet" lines span the outage too (each is printed a probe after the
    # request it names).
    assert a.first_unanswered is not None and a.last_unanswered is not None
    assert t["down_issued"] <= a.first_unanswered <= t["down"] + START_SLACK
    assert t["up"] - END_SLACK <= a.last_unanswered <= t["up_done"] + END_SLACK


# --- hand-made logs: the maths ----------------------------------------------------------


def test_send_times_from_replies_and_no_answer_lines() -> None:
    log = parse("\n".join([
        reply(10.0015, 1, 0.5),  # sent at 10.0015 - 0.0005 = 10.001
        no_answer(10.002, 1),  # printed just before seq 2 left: sent at 10.002
        reply(10.0035, 2, 1.5),  # also says 10.002, but the first word on seq 2 stands
    ]))
    assert send_times(log) == pytest.approx({1: 10.001, 2: 10.002})


def test_sequence_numbers_unwrap_past_65535() -> None:
    log = parse("\n".join(
        reply(50.0 + i / 1000, seq, 0.1) for i, seq in enumerate([65534, 65535, 0, 1])))
    assert [p.seq for p in log.lines] == [65534, 65535, 65536, 65537]
    a = analyze(log)
    # No summary: transmitted is the seq span, 65537 - 65534 + 1 = 4, all answered.
    assert (a.transmitted, a.replies, a.lost) == (4, 4, 0)
    # Sends at 50 s - 0.1 ms + i ms: 3 ms over 3 seqs.
    assert a.interval_ms == pytest.approx(1.0)


def test_late_reply_across_the_wrap_keeps_its_sequence() -> None:
    # iputils in a queued outage at the wrap: 65535 left at 20.001 and got no answer;
    # 0 and 1 left 10 ms apart (each after a "no answer" line); then all three replies
    # came at once.
    log = parse("\n".join([
        reply(20.000100, 65534, 0.1),
        no_answer(20.011, 65535),
        no_answer(20.021, 0),
        reply(20.021500, 65535, 20.5),
        reply(20.021510, 0, 10.5),
        reply(20.021520, 1, 0.5),
    ]))
    a = analyze(log)
    # Four requests (65534, 65535, 0 and 1), all answered. Unwrapping only forwards
    # would make the late 65535 into 131071 and then 0 and 1 into 131072 and 131073:
    # a span of 65540 with 65536 requests lost.
    assert (a.transmitted, a.lost) == (4, 0)
    assert [p.seq for p in log.lines] == [65534, 65535, 65536, 65535, 65536, 65537]


def test_duplicates_are_flagged_and_not_counted() -> None:
    log = parse("\n".join([
        reply(1.001, 1, 0.1),
        reply(1.002, 2, 0.1),
        reply(1.0025, 2, 0.3, dup=True),
        reply(1.003, 3, 0.1),
    ]))
    assert [p.duplicate for p in log.lines] == [False, False, True, False]
    a = analyze(log)
    assert (a.replies, a.transmitted, a.lost) == (3, 3, 0)
    # The DUP (1.0025) does not halve the 1 ms gaps, nor move seq 2's send time to
    # 1.0025 - 0.0003 = 1.0022.
    assert a.blackout_ms == pytest.approx(1.0)
    assert send_times(log)[2] == pytest.approx(1.0019)


def test_icmp_error_line_is_an_unanswered_error() -> None:
    log = parse("\n".join([
        reply(5.001, 1, 0.1),
        "[5.002000] From 10.0.0.1 icmp_seq=2 Destination Host Unreachable",
        reply(5.003, 3, 0.1),
        "",
        "--- 10.0.0.2 ping statistics ---",
        "3 packets transmitted, 2 received, +1 errors, 33.3333% packet loss, time 2ms",
    ]))
    err = log.lines[1]
    assert (err.seq, err.rtt_ms, err.error, err.ts) == (2, None, True, 5.002)
    assert log.transmitted == 3
    # An error arrives long after its request left (ARP gives up after ~3 s): it must
    # not pose as a send time.
    assert sorted(send_times(log)) == [1, 3]
    a = analyze(log)
    assert (a.replies, a.transmitted, a.lost) == (2, 3, 1)
    assert a.blackout_ms == pytest.approx(2.0)


def test_a_failed_send_is_a_send_time() -> None:
    # The prober's own error line, printed as the send fails: unlike an ICMP error it
    # does mark when a request (2) tried to leave, i.e. when the link was sampled down.
    log = parse("\n".join([
        reply(40.00101, 1, 0.01),
        "[40.002000] From 10.0.0.2 icmp_seq=2 send failed: No buffer space available",
        no_answer(40.003, 2),
        reply(40.00301, 3, 0.01),
    ]))
    failed = log.lines[1]
    assert (failed.seq, failed.error, failed.send_failed) == (2, True, True)
    assert send_times(log) == pytest.approx({1: 40.001, 2: 40.002, 3: 40.003})
    a = analyze(log)
    assert (a.replies, a.transmitted, a.lost) == (2, 3, 1)


def test_window_selects_the_hole_it_overlaps_not_the_longest() -> None:
    # Replies every 10 ms from t=100 s, except a 500 ms hole after 100.02 and a 100 ms
    # hole after 100.62.
    times = [100.00, 100.01, 100.02, 100.52, 100.53, 100.61, 100.62, 100.72, 100.73]
    log = parse("\n".join(reply(t, i, 0.1) for i, t in enumerate(times, 1)))
    assert analyze(log).blackout_ms == pytest.approx(500.0)
    inside = analyze(log, (100.65, 100.70))  # wholly inside the short hole
    assert inside.blackout_ms == pytest.approx(100.0)
    assert (inside.blackout_start, inside.blackout_end) == (100.62, 100.72)
    # Touching the hole's far edge is enough; a window inside an ordinary 10 ms gap
    # gets that gap.
    assert analyze(log, (100.72, 100.80)).blackout_ms == pytest.approx(100.0)
    assert analyze(log, (100.525, 100.528)).blackout_ms == pytest.approx(10.0)


def test_late_threshold_is_relative_to_the_median() -> None:
    # Median RTT 1 ms: late means above max(5, 10 * 1) = 10 ms.
    rtts = [1.0, 1.0, 1.0, 1.0, 9.9, 10.5, 40.0]
    log = parse("\n".join(reply(1.0 + i / 100, i, r) for i, r in enumerate(rtts, 1)))
    a = analyze(log)
    assert (a.median_rtt_ms, a.late_replies, a.late_max_rtt_ms) == (1.0, 2, 40.0)


def test_sent_lines_give_the_edges_to_one_interval() -> None:
    # tapmig prober: seq k leaves at 30 + k ms ("sent" line); 1-3 and 9-10 are answered
    # after 0.01 ms, 4-8 are not, so "no answer yet for k" is printed as k + 1 leaves.
    def sent(k: int) -> str:
        return f"[{30 + k / 1000:.6f}] sent icmp_seq={k}"

    def answered(k: int) -> list[str]:
        return [sent(k), reply(30 + k / 1000 + 1e-5, k, 0.01)]

    lines = answered(1) + answered(2) + answered(3) + [sent(4)]
    for k in range(4, 9):
        lines += [no_answer(30 + (k + 1) / 1000, k)] + ([sent(k + 1)] if k < 8 else [])
    lines += answered(9) + answered(10)
    log = parse("\n".join(lines))
    assert sorted(log.sent) == list(range(1, 11))
    a = analyze(log)
    assert a.blackout_ms == pytest.approx(6.0)  # 30.00301 -> 30.00901
    assert (a.transmitted, a.lost, a.no_answer_lines) == (10, 5, 5)
    # Start: 3 left at 30.003, 4 at 30.004; end: 8 at 30.008, 9 at 30.009.
    assert a.resolution_ms == pytest.approx(1.0)
    # Without the "sent" lines (as in an iputils log) nothing says when 4 left, and the
    # figure must not claim more than the log shows: at least the true 1 ms.
    bare = analyze(parse("\n".join(line for line in lines if "] sent " not in line)))
    assert bare.resolution_ms is not None and bare.resolution_ms >= 1.0


# --- errors the user sees ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n"])
def test_analyze_file_without_ping_lines_is_a_one_line_error(tmp_path: Path,
                                                             text: str) -> None:
    path = tmp_path / "ping.log"
    path.write_text(text)
    with pytest.raises(TapmigError, match="no `ping -D -O` lines") as exc:
        analyze_file(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_analyze_file_missing_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(TapmigError, match="cannot read ping log") as exc:
        analyze_file(tmp_path / "absent.log")
    assert "\n" not in str(exc.value)


def test_empty_log_analyzes_to_nothing() -> None:
    a = analyze(PingLog([], None))
    assert a == Analysis(0, 0, 0, None, None, None, None, None, 0, None, None, 0, None, None)


def test_pinger_rejects_an_unknown_prober(tmp_path: Path) -> None:
    unchecked: Any = "fping"  # as from a JSON file or a caller without mypy
    with pytest.raises(UsageError, match="unknown prober 'fping'; use one of tapmig, iputils"):
        Pinger("10.0.0.2", tmp_path / "ping.log", prober=unchecked)
