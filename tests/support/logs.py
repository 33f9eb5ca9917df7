"""Probe logs made by hand, line for line as the probes write them (harness.probes.flow,
harness.probes.tcp), for the tests of what reads them: the flows and TCP analyses and
the timeline. The probes themselves run against real guests in tests/test_traffic.py.
"""

from __future__ import annotations

import json

from harness.probes import tcp as tcp_probe

STOP, RESUME = 1000.0, 1000.1
WINDOW = (STOP, RESUME)


def flow_log(flows_n: int, interval: float, start: float, end: float,
             silent: dict[int, tuple[float, float]], rtt: float = 0.001,
             cpus: int = 1) -> str:
    """Requests every `interval` per flow; flow f gets no reply to requests sent in
    silent[f] (from, to), and CPU f % cpus answers it."""
    lines = [f"FLOWS {flows_n} to 10.0.0.2 ports 7000-{7000 + flows_n - 1} interval 8 ms"]
    for seq in range(1, round((end - start) / interval) + 1):
        t = start + (seq - 1) * interval
        for f in range(flows_n):
            ts = t + f * interval / flows_n
            lines.append(f"[{ts:.6f}] sent flow={f} seq={seq}")
            hole = silent.get(f)
            if hole is None or not hole[0] <= ts < hole[1]:
                lines.append(f"[{ts + rtt:.6f}] reply flow={f} seq={seq} cpu={f % cpus} "
                             f"time={1000 * rtt:.3f} ms")
    return "\n".join(lines) + "\n"


def tcp_log(msgs: int, interval: float, start: float, held: tuple[float, float],
            rtt: float = 0.001, retrans_at: float | None = None) -> str:
    """Messages every interval; echoes of those sent inside `held` come at its end."""
    lines = [f"[{start - 0.01:.6f}] connected 10.0.0.1:40000 -> 10.0.0.2:5000"]
    for seq in range(msgs):
        ts = start + seq * interval
        lines.append(f"[{ts:.6f}] tx seq={seq}")
        back = held[1] if held[0] <= ts < held[1] else ts + rtt
        lines.append(f"[{max(back, ts + rtt):.6f}] rx seq={seq}")
        if retrans_at is not None and ts <= retrans_at < ts + interval:
            acked = 1 + tcp_probe.MSG * 42
            lines.append(f"[{retrans_at:.6f}] tcpinfo ca_state=4 total_retrans=1 "
                         f"acked={acked}")
    lines.sort(key=lambda line: float(line[1:line.index("]")]))
    summary = {"messages": msgs, "echoed": msgs, "tcp_info": {"total_retrans": 1},
               "counters": {"TCPTimeouts": 1, "RetransSegs": 1}}
    return "\n".join([*lines, "summary " + json.dumps(summary)]) + "\n"
