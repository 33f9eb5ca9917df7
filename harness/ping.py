"""The ICMP probe and its analysis: ping the guest about 1000 times a second across a
migration, then find the blackout in the log.

Pinger starts a prober (tapmig's own, which keeps its 0.9 ms pace through an outage, or
iputils `ping -D -O`) inside the namespace through its prefix, writing `ping -D -O` lines
to a log; INTERVALS is each prober's spacing. parse reads such a log into a PingLog of
PingLines; analyze finds the longest hole between replies (within a window such as
[STOP, RESUME], when given), the lost and late replies and the achieved resolution, as
an Analysis; analyze_file does both for a log on disk.

    with Pinger("192.168.100.2", run / "ping.log", prefix=ns.exec_prefix()) as probe:
        ...  # migrate
        text = probe.stop()
    print(analyze(parse(text), window=(stop, resume)).blackout_ms)

Exposes: Pinger, INTERVALS, parse, analyze, analyze_file, Analysis, PingLog, PingLine

This is the public face of harness.analysis.ping and the ICMP side of
harness.probes.driver; harness's own code imports those.
"""

from __future__ import annotations

from harness.analysis.ping import Analysis, PingLine, PingLog, analyze, analyze_file, parse
from harness.probes.driver import INTERVALS, Pinger

__all__ = ["INTERVALS", "Analysis", "PingLine", "PingLog", "Pinger", "analyze",
           "analyze_file", "parse"]
