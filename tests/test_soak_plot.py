"""The soak pictures (harness.report.soak_plot): each tracked figure of a chain against the
hop, with its Theil-Sen fit and its flag. Pure: real hop records of this machine
(tests/data/chain) and longer chains derived from their footprints with a known injected
slope, so the picture can be checked against the growth put in."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.analysis.trend import COUNTERS, DRIFTS, MEMORY, SHOWN_POINTS, theil_sen
from harness.record import RunRecord
from harness.report import chain_summary, soak_plot
from harness.report.render import render_html
from harness.report.summary import build_report, load_report, write_report

DATA = Path(__file__).parent / "data" / "chain" / "me-chain2-records.json"
LOCAL, NEW_TAP = "001-local-A-db124a", "001-new-tap-A-150366"
# The captured chain predates the heap figure: no panel may be drawn for what it lacks.
TRACKED = {*COUNTERS, *MEMORY, *DRIFTS} - {"tapmig_heap_kib"}


def real() -> list[RunRecord]:
    return [RunRecord.from_json(r, str(DATA)) for r in json.loads(DATA.read_text())]


def summary_of(recs: list[RunRecord], chain: str) -> dict[str, Any]:
    return next(c for c in chain_summary.chain_summaries(recs) if c["chain"] == chain)


def derived(n: int, rss: list[float] | None = None, blackout: list[float] | None = None,
            ) -> list[RunRecord]:
    """n hops of the real local chain, its six real footprints taken in turn, with the
    tapmig RSS and the blackout replaced where given."""
    base = [r for r in real() if r.chain == LOCAL]
    out = []
    for i in range(n):
        rec = base[i % len(base)]
        fp = dict(rec.footprint or {})
        if rss is not None:
            fp["tapmig_rss_kib"] = rss[i]
        out.append(dataclasses.replace(
            rec, chain="soak", hop=i + 1, footprint=fp,
            blackout_ms=rec.blackout_ms if blackout is None else blackout[i]))
    return out


def panels(section: str) -> dict[str, ET.Element]:
    """The panels of one chain's HTML, by figure, each parsed as the SVG it is."""
    found = re.findall(r'<svg class="soak-panel".*?</svg>', section, re.S)
    trees = [ET.fromstring(svg) for svg in found]
    return {t.attrib["data-metric"]: t for t in trees}


def fit_line(panel: ET.Element) -> ET.Element | None:
    return next((e for e in panel.iter("line") if e.attrib.get("class") == "fit"), None)


def texts(panel: ET.Element) -> str:
    return " ".join("".join(t.itertext()) for t in panel.iter("text"))


def finding(summary: dict[str, Any], metric: str) -> dict[str, Any]:
    return next(f for f in summary["findings"] if f["metric"] == metric)


def test_the_summary_carries_the_real_series_and_the_fit() -> None:
    recs = real()
    local = summary_of(recs, LOCAL)
    series = local["series"]
    assert series["hop"] == [1, 2, 3, 4, 5, 6]
    assert set(series) == {"hop", *TRACKED}
    ok = sorted((r for r in recs if r.chain == LOCAL), key=lambda r: r.hop or 0)
    assert series["tapmig_rss_kib"] == [(r.footprint or {})["tapmig_rss_kib"] for r in ok]
    assert series["blackout_ms"] == [r.blackout_ms for r in ok]
    rss = finding(local, "tapmig_rss_kib")
    assert rss["fit_hops"] == (4, 6)  # memory: judged on the second half
    fitted = [(h, y) for h, y in zip(series["hop"], series["tapmig_rss_kib"], strict=True)
              if h >= 4]
    assert rss["intercept"] == pytest.approx(
        statistics.median(y - rss["per_hop"] * h for h, y in fitted))
    assert finding(local, "blackout_ms")["fit_hops"] == (1, 6)
    json.dumps(local)  # report.json carries it as is


def test_one_panel_per_figure_per_chain_and_nothing_fetched() -> None:
    summaries = chain_summary.chain_summaries(real())
    section = chain_summary.html_section(summaries)
    for c in summaries:
        own = soak_plot.html_panels(c)
        assert set(panels(own)) == TRACKED and own.count('class="soak-panel"') == len(TRACKED)
    assert section.count('class="soak-panel"') == 2 * len(TRACKED)
    assert section.index("<table>") < section.index("soak-panel")
    assert "<script" not in section and "http" not in section and "href" not in section


def test_the_whole_report_shows_the_panels() -> None:
    page = render_html(build_report(real(), {}, partial=False))
    assert page.count('class="soak-panel"') == 2 * len(TRACKED)


def test_memory_points_before_the_judged_half_are_drawn_apart() -> None:
    panel = panels(soak_plot.html_panels(summary_of(real(), NEW_TAP)))["tapmig_rss_kib"]
    circles = list(panel.iter("circle"))
    hollow = [c for c in circles if c.attrib.get("fill") == "white"]
    assert (len(circles), len(hollow)) == (6, 3)
    assert "2nd half" in texts(panel)


def test_an_injected_rss_leak_of_12_kib_per_hop_is_drawn_and_flagged() -> None:
    """The issue's soak: tapmig's RSS growing ~12 KiB a hop over 1000 hops."""
    rng = random.Random(19)
    first = (real()[6].footprint or {})["tapmig_rss_kib"]
    recs = derived(1000, rss=[first + 12 * i + rng.randint(-150, 150) for i in range(1000)])
    summary = summary_of(recs, "soak")
    rss = finding(summary, "tapmig_rss_kib")
    assert rss["flagged"] and rss["per_hop"] == pytest.approx(12, abs=0.3)
    assert rss["ci"][0] <= 12 <= rss["ci"][1] and rss["fit_hops"] == (501, 1000)
    hops = summary["series"]["hop"]
    assert len(hops) == SHOWN_POINTS and (hops[0], hops[-1]) == (1, 1000)
    assert len(json.dumps(summary["series"])) < 20_000  # report.json stays small

    drawn = panels(soak_plot.html_panels(summary))
    panel = drawn["tapmig_rss_kib"]
    assert panel.attrib["data-flagged"] == "yes" and "LEAK" in texts(panel)
    assert "+12 KiB/hop, 95% CI [" in texts(panel)
    line = fit_line(panel)
    assert line is not None and line.attrib["stroke"] == soak_plot.COLOURS["flag"]
    assert not any(p.attrib["data-flagged"] == "yes" for m, p in drawn.items()
                   if m != "tapmig_rss_kib")

    row = next(x for x in soak_plot.markdown(summary) if x.startswith("| tapmig RSS"))
    assert "+12 KiB/hop [" in row and row.endswith("| LEAK |")
    spark = row.split(" | ")[4]
    assert spark[0] == "▁" and spark[-1] == "█"


def test_the_fit_line_ends_are_slope_times_hop_plus_intercept() -> None:
    first = 48536
    recs = derived(40, rss=[first + 12 * i for i in range(40)])
    summary = summary_of(recs, "soak")
    rss = finding(summary, "tapmig_rss_kib")
    assert (rss["per_hop"], rss["intercept"], rss["fit_hops"]) == (12, first - 12, (21, 40))
    panel = panels(soak_plot.html_panels(summary))["tapmig_rss_kib"]
    line = fit_line(panel)
    assert line is not None
    hops = [int(h) for h in line.attrib["data-hops"].split()]
    values = [float(v) for v in line.attrib["data-values"].split()]
    assert hops == [21, 40] and values == [12 * h + first - 12 for h in hops]
    series = summary["series"]
    fr, _ = soak_plot.frame("tapmig_rss_kib", series["hop"], series["tapmig_rss_kib"],
                            list(zip(hops, values, strict=True)))
    ends = [(float(line.attrib[f"x{k}"]), float(line.attrib[f"y{k}"])) for k in (1, 2)]
    assert ends == [(fr.x(h), fr.y(v)) for h, v in zip(hops, values, strict=True)]
    dots = {(float(c.attrib["cx"]), float(c.attrib["cy"])) for c in panel.iter("circle")}
    assert (fr.x(40), fr.y(first + 12 * 39)) in dots  # the last hop lies on the line
    assert ends[1] == (fr.x(40), fr.y(first + 12 * 39))


def test_a_flat_real_counter_has_slope_zero_and_a_level_line() -> None:
    summary = summary_of(real(), LOCAL)
    fds = finding(summary, "qemu_fds")
    assert (fds["per_hop"], fds["ci"], fds["intercept"], fds["flagged"]) == (0, (0, 0), 31,
                                                                            False)
    panel = panels(soak_plot.html_panels(summary))["qemu_fds"]
    line = fit_line(panel)
    assert line is not None and line.attrib["y1"] == line.attrib["y2"]
    assert panel.attrib["data-flagged"] == "no" and "LEAK" not in texts(panel)
    assert "0 per hop, 95% CI [0, 0]" in texts(panel)
    row = next(x for x in soak_plot.markdown(summary) if x.startswith("| QEMU fds"))
    assert row == ("| QEMU fds | 31 | 0 per hop [0, 0] | hops 1 to 6; n=6 < 10: too few | "
                   "▁▁▁▁▁▁ | — |")


def test_a_drifting_blackout_is_titled_drift() -> None:
    rng = random.Random(5)
    recs = derived(60, blackout=[30 + 0.5 * i + rng.uniform(-3, 3) for i in range(60)])
    summary = summary_of(recs, "soak")
    panel = panels(soak_plot.html_panels(summary))["blackout_ms"]
    assert panel.attrib["data-flagged"] == "yes" and "DRIFT" in texts(panel)
    assert "ms/hop" in texts(panel)


def strip_new_keys(summary: dict[str, Any]) -> dict[str, Any]:
    """A chain summary as report.json had it before the series and the fitted lines."""
    old = {k: v for k, v in summary.items() if k != "series"}
    old["findings"] = [{k: v for k, v in f.items() if k not in ("intercept", "fit_hops")}
                       for f in summary["findings"]]
    return old


def test_an_old_summary_renders_without_plots_and_without_error() -> None:
    old = [strip_new_keys(c) for c in chain_summary.chain_summaries(real())]
    section = chain_summary.html_section(old)
    assert "<table>" in section and "soak-panel" not in section and "Per hop" not in section
    text = "\n".join(chain_summary.markdown(old))
    assert "| chain |" in text and "Per hop" not in text
    assert soak_plot.html_panels({"chain": "x"}) == "" and soak_plot.markdown({}) == []


def test_an_old_report_json_loads_and_renders(tmp_path: Path) -> None:
    paths = write_report(build_report(real(), {}, partial=False), tmp_path)
    data = json.loads(paths["json"].read_text())
    data["chains"] = [strip_new_keys(c) for c in data["chains"]]
    old = tmp_path / "old" / "report.json"
    old.parent.mkdir()
    old.write_text(json.dumps(data))
    report = load_report(old)
    again = write_report(report, tmp_path / "again")
    assert "soak-panel" not in again["html"].read_text()
    assert "## Chains" in again["md"].read_text()


def test_a_one_hop_chain_draws_its_point_without_a_line() -> None:
    summary = summary_of(real()[:1], NEW_TAP)
    panel = panels(soak_plot.html_panels(summary))["tapmig_rss_kib"]
    assert len(list(panel.iter("circle"))) == 1 and fit_line(panel) is None
    assert "one hop: no trend" in texts(panel)


def test_sparkline() -> None:
    assert soak_plot.sparkline([5.0] * 30) == "▁" * 24
    rising = soak_plot.sparkline([float(i) for i in range(100)])
    assert len(rising) == 24 and list(rising) == sorted(rising)
    assert (rising[0], rising[-1]) == ("▁", "█") and soak_plot.sparkline([]) == ""


def test_ticks_hold_the_values_in_round_steps() -> None:
    marks = soak_plot.ticks(48536, 49812, whole=False)
    assert marks[0] <= 48536 and marks[-1] >= 49812 and marks == [48500, 49000, 49500, 50000]
    assert soak_plot.ticks(31, 31, whole=True) == [30, 31, 32]
    assert soak_plot.ticks(0, 0, whole=True) == [0, 1]


def test_the_intercept_is_as_robust_as_the_slope() -> None:
    xs = list(range(1, 31))
    ys = [3.0 * x + 10 for x in xs]
    ys[4] = ys[20] = 900.0
    s = theil_sen(xs, ys)
    assert s is not None and (s.per_hop, s.intercept) == pytest.approx((3.0, 10.0))
