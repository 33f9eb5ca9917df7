"""The timeline of a hop (harness.report.timeline), drawn from hand-made logs of every
probe (tests/support/logs.py) and read back as SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from harness.analysis import flows, tcp_stream
from harness.analysis.ping import parse as parse_ping
from harness.report import timeline
from tests.support.logs import RESUME, STOP, WINDOW, flow_log, tcp_log
from tests.support.records import record

# --- the timeline ---------------------------------------------------------------------


def test_timeline_draws_every_reply_lost_request_and_the_tcp_stall() -> None:
    # Everything lies within 200 ms of the outage, so all of it is in the picture.
    ping_text = "".join(f"[{999.8 + i * 0.001:.6f}] sent icmp_seq={i}\n" + (
        "" if 190 <= i < 260 else f"[{999.8 + i * 0.001 + 0.0003:.6f}] 64 bytes from "
        f"10.0.0.2: icmp_seq={i} ttl=64 time=0.300 ms\n") for i in range(1, 500))
    icmp = parse_ping(ping_text)
    flow_text = flow_log(2, 0.01, 999.8, 1000.3, {1: (999.99, 1000.07)})
    tcp_text = tcp_log(50, 0.01, 999.8, (999.99, 1000.2), retrans_at=1000.15)
    rec = record(mode="local", qemu="q", qemu_version="10.2.2", accel="tcg", guest="g",
                    stop_ts=STOP, resume_ts=RESUME, blackout_ms=70.0, lost=70,
                    blackout_start=999.989, blackout_end=1000.06, flows=2, tcp="continuous")
    log = flows.parse(flow_text)
    rec.flow_detail = [r.to_json() for r in flows.analyze(log, WINDOW, RESUME).flows]
    rec.tcp_detail = tcp_stream.analyze(tcp_stream.parse(tcp_text), WINDOW).to_json()
    page = timeline.draw(rec, icmp, log, tcp_stream.parse(tcp_text))
    assert "<script" not in page and "href" not in page  # self-contained
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    ns = "{http://www.w3.org/2000/svg}"
    texts = {t.text for t in svg.iter(f"{ns}text")}
    assert {"STOP", "RESUME", "ICMP", "flow 0", "flow 1", "▲ RTO"} <= texts
    replies = sum(1 for p in icmp.lines if p.rtt_ms is not None) + len(log.replies)
    assert len(list(svg.iter(f"{ns}circle"))) == replies  # a dot per reply
    lost_ticks = [e for e in svg.iter(f"{ns}line") if e.get("stroke") == timeline.COLORS["lost"]]
    assert len(lost_ticks) == 70 + len(log.sent) - len(log.replies)
    assert len(list(svg.iter(f"{ns}polyline"))) == 2  # TCP sent and echoed
