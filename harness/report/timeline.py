"""A picture of one migration: every probe reply of every flow against time.

One self-contained HTML page with an inline SVG, no script and nothing fetched,
so it opens from a CI artifact as it is. Time runs left to right in ms from
STOP; each row is a flow (ICMP first): a dot per reply (orange when late), a red
tick per request never answered, drawn at the time it was sent, and the flow's
hole shaded. Below, the TCP connection: messages sent and echoed, its longest
stall shaded, and its retransmissions marked.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from harness.analysis import ping
from harness.analysis.flows import FlowLog, late_after_ms
from harness.analysis.tcp_stream import TcpLog
from harness.errors import InternalError
from harness.record import RunRecord
from harness.report import timeline_bands, units
from harness.report.canvas import LEFT, RIGHT, WIDTH, Canvas

TOP = 52
ROW = 16
TCP_HEIGHT = 150
# tcpi_ca_state's TCP_CA_Loss (linux/tcp.h): a retransmission in it followed a timeout.
CA_LOSS = 4
BEFORE_MS, AFTER_MS = 250.0, 400.0  # shown around the outage
COLORS = {"reply": "#3b6fb6", "late": "#e08a00", "lost": "#d62728", "hole": "#d62728",
          "stop": "#444", "tx": "#999", "rx": "#2a9d5c"}


@dataclass
class Lane:
    """One row: replies (time, late?), lost requests' send times, and the hole."""

    label: str
    replies: list[tuple[float, bool]]
    lost: list[float]
    hole: tuple[float | None, float | None]


def icmp_lane(rec: RunRecord, log: ping.PingLog) -> Lane:
    replies = [p for p in log.lines if p.rtt_ms is not None and not p.duplicate]
    limit = late_after_ms([p.rtt_ms for p in replies if p.rtt_ms is not None])
    answered = {p.seq for p in replies}
    last = max(answered, default=0)
    lost = [t for s, t in ping.send_times(log).items() if s not in answered and s <= last]
    return Lane("ICMP", [(p.ts, (p.rtt_ms or 0) > limit) for p in replies], lost,
                (rec.blackout_start, rec.blackout_end))


def flow_lanes(rec: RunRecord, log: FlowLog) -> list[Lane]:
    lanes = []
    for f in range(log.flows):
        detail = rec.flow_detail[f] if f < len(rec.flow_detail) else {}
        keys = [k for k in log.replies if k[0] == f]
        limit = late_after_ms([log.rtt_ms[k] for k in keys])
        queue = detail.get("queue")
        label = f"flow {f}" + (f" · q{queue}" if queue is not None else "")
        lanes.append(Lane(label, [(log.replies[k][0], log.rtt_ms[k] > limit) for k in keys],
                          [t for k, t in log.sent.items() if k[0] == f and k not in log.replies],
                          (detail.get("blackout_start"), detail.get("blackout_end"))))
    return lanes


def window(rec: RunRecord) -> tuple[float, float]:
    """STOP and RESUME: every picture is drawn around them."""
    if rec.stop_ts is None or rec.resume_ts is None:
        raise InternalError("a timeline was asked of a record without STOP and RESUME")
    return rec.stop_ts, rec.resume_ts


def span(rec: RunRecord, lanes: list[Lane], tcp: TcpLog | None) -> tuple[float, float]:
    """The time range to show, in s: the outage of every flow, with a margin."""
    lo, hi = window(rec)
    stop = lo
    for lane in lanes:
        lo = min([lo, *(t for t in lane.hole[:1] if t is not None)])
        hi = max([hi, *(t for t in lane.hole[1:] if t is not None)])
    if tcp is not None and rec.tcp_detail.get("stall_to_ms") is not None:
        hi = max(hi, stop + rec.tcp_detail["stall_to_ms"] / 1000)
    return lo - BEFORE_MS / 1000, hi + AFTER_MS / 1000


def draw_lane(c: Canvas, lane: Lane, y: float) -> None:
    start, end = lane.hole
    if start is not None and end is not None:
        c.add("rect", x=c.x(max(start, c.lo)), y=y - ROW / 2 + 1,
              width=max(c.x(min(end, c.hi)) - c.x(max(start, c.lo)), 1), height=ROW - 2,
              fill=COLORS["hole"], fill_opacity=0.15)
    c.add("text", x=LEFT - 6, y=y + 4, text=lane.label, font_size=11, text_anchor="end")
    for t in lane.lost:
        if c.shown(t):
            c.add("line", x1=c.x(t), x2=c.x(t), y1=y - ROW / 2 + 2, y2=y + ROW / 2 - 2,
                  stroke=COLORS["lost"], stroke_width=1.5)
    for t, late in lane.replies:
        if c.shown(t):
            c.add("circle", cx=c.x(t), cy=y, r=2.2 if late else 1.6,
                  fill=COLORS["late" if late else "reply"])


def draw_axis(c: Canvas, y: float) -> None:
    width_ms = 1000 * (c.hi - c.lo)
    step = next(s for s in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if width_ms / s <= 14)
    first = int((c.lo - c.stop) * 1000 // step + 1) * step
    for ms in range(first, int((c.hi - c.stop) * 1000) + 1, step):
        t = c.stop + ms / 1000
        c.add("line", x1=c.x(t), x2=c.x(t), y1=y, y2=y + 4, stroke="#666")
        c.add("text", x=c.x(t), y=y + 15, text=f"{ms:+d}" if ms else "0", font_size=10,
              text_anchor="middle", fill="#444")
    c.add("text", x=WIDTH - RIGHT, y=y + 28, text="ms from STOP", font_size=10,
          text_anchor="end", fill="#444")


def draw_tcp(c: Canvas, rec: RunRecord, tcp: TcpLog, y0: float) -> None:
    """Messages sent (grey) and echoed (green) in the shown range, the stall, retransmissions."""
    seqs = [s for s, t in tcp.tx.items() if c.shown(t)] + [s for s, t in tcp.rx.items()
                                                            if c.shown(t)]
    c.add("text", x=LEFT - 6, y=y0 + TCP_HEIGHT / 2, text="TCP messages", font_size=11,
          text_anchor="end")
    if not seqs:
        return
    base, top = min(seqs), max(max(seqs) - min(seqs), 1)

    def y(seq: int) -> float:
        return round(y0 + TCP_HEIGHT - (seq - base) / top * TCP_HEIGHT, 1)

    for seq in (base, base + top):
        c.add("text", x=LEFT - 6, y=y(seq) + 4, text=f"#{seq}", font_size=10,
              text_anchor="end", fill="#444")

    for name, events in (("tx", tcp.tx), ("rx", tcp.rx)):
        points = " ".join(f"{c.x(t)},{y(s)}" for s, t in sorted(events.items()) if c.shown(t))
        c.add("polyline", points=points, fill="none", stroke=COLORS[name], stroke_width=1.5)
    detail = rec.tcp_detail
    if detail.get("stall_from_ms") is not None and rec.stop_ts is not None:
        a = rec.stop_ts + detail["stall_from_ms"] / 1000
        b = rec.stop_ts + detail["stall_to_ms"] / 1000
        c.add("rect", x=c.x(max(a, c.lo)), y=y0, height=TCP_HEIGHT, fill=COLORS["hole"],
              width=max(c.x(min(b, c.hi)) - c.x(max(a, c.lo)), 1), fill_opacity=0.12)
    for r in detail.get("retransmitted", []):
        t = (rec.stop_ts or 0) + r["at_ms"] / 1000
        if c.shown(t):
            kind = "RTO" if r.get("ca_state") == CA_LOSS else "retransmit"
            c.add("text", x=c.x(t), y=y0 + TCP_HEIGHT + 12, text=f"▲ {kind}", font_size=10,
                  fill=COLORS["lost"], text_anchor="middle")


def figures(rec: RunRecord) -> str:
    def na(v: float | None) -> str:
        return units.ms(v, 1, "n/a")

    parts = [f"ICMP blackout {na(rec.blackout_ms)}", f"lost {rec.lost}"]
    if rec.flows:
        parts += [f"worst of {rec.flows} flows {na(rec.flow_blackout_ms)}",
                  f"spread {na(rec.flow_spread_ms)}", f"flow requests lost {rec.flow_lost}"]
    if rec.tcp != "off" and rec.tcp_detail:
        parts += [f"TCP ({rec.tcp}) stall {na(rec.tcp_stall_ms)}",
                  f"unechoed at STOP {rec.tcp_detail.get('backlog_at_stop')}",
                  f"retransmissions {rec.tcp_retrans}", f"RTO {'yes' if rec.tcp_rto else 'no'}"]
    return " · ".join(parts)


def draw(rec: RunRecord, icmp: ping.PingLog, flow_log: FlowLog | None,
         tcp: TcpLog | None) -> str:
    """The page for one hop; rec must carry STOP and RESUME and the flows' figures."""
    stop, resume = window(rec)
    lanes = [icmp_lane(rec, icmp), *(flow_lanes(rec, flow_log) if flow_log else [])]
    c = Canvas(*span(rec, lanes, tcp), stop)
    bottom = TOP + len(lanes) * ROW
    for i, lane in enumerate(lanes):
        draw_lane(c, lane, TOP + i * ROW + ROW / 2)
    found = timeline_bands.bands(rec, lanes)
    for j, band in enumerate(found):
        lane_y = None if band.lane is None else TOP + (band.lane + 1) * ROW - 3
        timeline_bands.draw_band(c, band, bottom + 6 + j * (timeline_bands.BAND + 4), lane_y)
    bottom += len(found) * (timeline_bands.BAND + 4) + (6 if found else 0)
    height = bottom + 30
    if tcp is not None:
        draw_tcp(c, rec, tcp, bottom + 30)
        height = bottom + 30 + TCP_HEIGHT + 20
    draw_axis(c, height)
    # STOP's label above RESUME's: the two lines may be a few pixels apart.
    for t, label, top in ((stop, "STOP", TOP - 18), (resume, "RESUME", TOP - 4)):
        c.vline(t, top, height, COLORS["stop"], label)
    end: float = height + 40
    if found:
        c.parts.insert(0, timeline_bands.HATCH)
        end = timeline_bands.draw_zoom(c, found[0], height + 70)
    return page(rec, c, end, found)


def page(rec: RunRecord, c: Canvas, height: float,
         found: list[timeline_bands.Band] | None = None) -> str:
    title = (f"tapmig {rec.mode} migration · QEMU {rec.qemu_version} · {rec.accel} · "
             f"{rec.vcpus} vCPU, {rec.queues} queues")
    legend = [("reply", "reply"), ("late", "late reply"), ("lost", "request never answered "
               "(at its send time)"), ("hole", "the hole"), ("tx", "TCP sent"),
              ("rx", "TCP echoed")]
    keys = "".join(f'<span><i style="background:{COLORS[k]}"></i>{html.escape(v)}</span>'
                   for k, v in legend)
    if found:
        keys += timeline_bands.legend()
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
           f'font-family="sans-serif">{"".join(c.parts)}</svg>')
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;margin:1em}"
            "span{margin-right:1.2em;font-size:12px}i{display:inline-block;width:10px;"
            "height:10px;margin-right:4px}td,th{border:1px solid #ccc;padding:1px 6px;"
            "font-size:12px}table{border-collapse:collapse}</style></head><body>"
            f"<h3>{html.escape(title)}</h3><p>{html.escape(figures(rec))}</p>"
            f"<p>{keys}</p>{svg}{timeline_bands.table(found) if found else ''}"
            "</body></html>\n")
