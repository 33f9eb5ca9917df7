"""The TCP check's pure logic (harness.analysis.tcp_stream) on hand-made logs written as
the TCP probe writes them (tests/support/logs.py), and the probe's own messages and
counters (harness.probes.tcp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.analysis import tcp_stream
from harness.errors import CheckFailed
from harness.probes import tcp as tcp_probe
from tests.support.logs import RESUME, STOP, WINDOW, tcp_log

# --- TCP ------------------------------------------------------------------------------


def test_tcp_stall_is_the_longest_wait_overlapping_the_migration() -> None:
    text = tcp_log(400, 0.005, 999.0, (999.95, 1000.25), retrans_at=1000.2)
    result = tcp_stream.analyze(tcp_stream.parse(text), (STOP, RESUME + 0.15))
    assert result.error is None and result.messages == result.echoed == 400
    assert result.stall_ms == pytest.approx(300, abs=1)
    assert result.stall_from_ms == pytest.approx(-50, abs=1)
    assert result.backlog_at_stop == 11  # those sent in [999.95, 1000.0], held
    assert result.retrans == 1 and result.rto is True
    # The retransmission resent message 42, the first one unacknowledged then.
    (r,) = result.retransmitted
    assert r["message"] == 42 and r["sent_ms"] == pytest.approx(1000 * (999.21 - STOP))
    assert r["at_ms"] == pytest.approx(200, abs=0.01)


def test_tcp_sparse_stall_counts_from_the_send() -> None:
    # One message every 50 ms; the one sent at 1000.0 waits until 1000.2.
    text = tcp_log(40, 0.05, 999.0, (999.99, 1000.2))
    result = tcp_stream.analyze(tcp_stream.parse(text), (STOP, RESUME + 0.15))
    assert result.stall_ms == pytest.approx(200, abs=1)


@pytest.mark.parametrize(("line", "kind"), [
    ("error reset: Connection reset by peer after 10 of 12 messages came back", "reset"),
    ("error closed: the guest closed the connection after 3 of 5 messages came back",
     "closed"),
    ("error data: message 7 arrived where message 6 was due", "data"),
])
def test_a_broken_connection_fails_the_run_naming_it(line: str, kind: str) -> None:
    text = tcp_log(10, 0.01, 999.9, (0, 0)).replace("summary", f"[1000.050000] {line}\nsummary")
    result = tcp_stream.analyze(tcp_stream.parse(text), (STOP, RESUME))
    assert result.error is not None and result.error.startswith(f"{kind}: ")
    assert "(at STOP+50 ms)" in result.error
    with pytest.raises(CheckFailed) as err:
        tcp_stream.check(result, "continuous")
    assert err.value.check == "tcp"
    assert str(err.value).startswith("TCP connection 10.0.0.1:40000 -> 10.0.0.2:5000 "
                                     f"(continuous) failed: {kind}: ")


def test_a_tcp_probe_killed_without_summary_fails() -> None:
    text = tcp_log(10, 0.01, 999.9, (0, 0)).split("summary")[0]
    with pytest.raises(CheckFailed, match="ended without a summary"):
        tcp_stream.check(tcp_stream.analyze(tcp_stream.parse(text), WINDOW), "sparse")


def test_tcp_messages_differ_and_counters_parse(tmp_path: Path) -> None:
    assert tcp_probe.message(1) != tcp_probe.message(2)
    assert len(tcp_probe.message(0)) == tcp_probe.MSG
    (tmp_path / "snmp").write_text("Ip: Forwarding\nIp: 1\nTcp: RtoMin RetransSegs\n"
                                   "Tcp: 200 7\n")
    (tmp_path / "netstat").write_text("TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\n"
                                      "TcpExt: 0 2 3\nIpExt: InNoRoutes\nIpExt: 0\n")
    assert tcp_probe.counters(tmp_path) == {"RetransSegs": 7, "TCPTimeouts": 2,
                                            "TCPLossProbes": 3}
