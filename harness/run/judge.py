"""The hop's verdicts: each check raises the error that names what broke, from values
alone (no QEMU is asked). A hop that passes every check is ok.

- `hop`: after the analysis: the handover, then every flow recovered and the TCP
  connection intact;
- `target`: after the guest ran on the target: the same TAP (local), fresh flows and
  every queue pair;
- `window`: last, since its verdict may be "inconclusive" rather than failed: the
  outage lies within [STOP - floor, RESUME + epsilon].
"""

from __future__ import annotations

from harness.analysis import flows, handover, queues, tcp_stream
from harness.analysis.noise import FIX_NOISE, FIX_SAMPLES
from harness.errors import CheckFailed, Inconclusive
from harness.run.config import TAP0, Config
from harness.run.results import Analysed, Resumed, SameTap, Verified


def hop(analysed: Analysed, cfg: Config) -> None:
    """A queue not handed over as the mode promises, a flow that did not recover, or a
    broken TCP connection fails the hop."""
    handover.check(analysed.handover, cfg.queues)
    if analysed.traffic.flows is not None:
        flows.check_recovered(analysed.traffic.flows, cfg.vcpus)
    if analysed.traffic.tcp is not None:
        tcp_stream.check(analysed.traffic.tcp, cfg.tcp)


def target(verified: Verified, cfg: Config) -> None:
    """Local mode kept the very same TAP; every fresh flow answered and every live queue
    pair carried packets both ways; with all_queues, every queue pair of the device."""
    if verified.same_tap is not None:
        same_tap(verified.same_tap)
    if (t := verified.target) is None:
        return
    flows.check_recovered(t.fresh, cfg.vcpus, what="from the target", name="fresh flow")
    queues.check_every_queue(t.queues_after, "on the target")
    if t.all_queues is not None:
        queues.check_every_queue(t.all_queues, "on the target once the guest enabled "
                                 "them all")


def same_tap(s: SameTap) -> None:
    """Local migration: the very same kernel TAP keeps serving, after the source is gone."""
    if s.ifindex[0] != s.ifindex[1]:
        raise CheckFailed(f"{TAP0} changed ifindex from {s.ifindex[0]} to {s.ifindex[1]}",
                          check="same-tap")
    (rx0, rx1), (tx0, tx1) = s.rx_packets, s.tx_packets
    if not (rx1 > rx0 and tx1 > tx0):
        raise CheckFailed(f"{TAP0} counters did not rise while the target guest answered "
                          f"ping (rx {rx0}->{rx1}, tx {tx0}->{tx1})", check="same-tap")
    if not s.target_runs:
        raise CheckFailed("the target QEMU died after migration", check="same-tap")


def window(analysed: Analysed, resumed: Resumed) -> None:
    """The outage must lie within [STOP - floor, RESUME + eps]: the network went down
    no earlier than the guest stopped, and came back promptly after it resumed. Only
    the end's slack follows the host's noise: a busy host makes a fresh target late,
    but no load made the outage begin more than 22 ms before STOP
    (tests/data/noise/README.md). A host too noisy to judge makes it inconclusive."""
    cal = analysed.calibration
    if not cal.judgeable:
        fix = FIX_SAMPLES if cal.figure is None else FIX_NOISE
        raise Inconclusive(f"inconclusive: {cal.reason}", cal.figure or "ICMP replies",
                           cal.figure_ms or 0.0, cal.epsilon_ms, fix)
    icmp = analysed.icmp.analysis
    start, end = icmp.blackout_start, icmp.blackout_end
    if start is None or end is None:
        raise CheckFailed("no replies around the migration window: the prober saw no "
                          "outage boundaries (is the ping log empty?)", check="window")
    before, after = cal.floor_ms / 1000, cal.epsilon_ms / 1000
    if start < resumed.stop - before or end > resumed.resume + after:
        raise CheckFailed(
            f"blackout [{start:.6f}, {end:.6f}] lies outside "
            f"[STOP - {cal.floor_ms:g} ms, RESUME + {cal.epsilon_ms:g} ms] = "
            f"[{resumed.stop - before:.6f}, {resumed.resume + after:.6f}]", check="window")
