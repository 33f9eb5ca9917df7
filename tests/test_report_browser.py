"""The HTML report really renders in a browser, offline, with its plots drawn."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from harness.report.render import COLOURS
from harness.report.summary import build_report, write_report
from harness.vocabulary import Mode
from tests.support.records import record

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium absent (apt-get install chromium)")


BASES: tuple[tuple[Mode, float], ...] = (("new-tap", 80.0), ("local", 30.0))


@pytest.fixture
def report_html(tmp_path: Path) -> Path:
    records = [record(mode=mode, guest="debian-12", host_kernel="6.1.0", iteration=i,
                      blackout_ms=base + i % 3, downtime_ms=base / 2 + i % 2)
               for mode, base in BASES for i in range(1, 7)]
    return write_report(build_report(records, {}, partial=False), tmp_path / "out")["html"]


def chromium(tmp_path: Path, *args: str) -> str:
    """Headless, with every route to the network closed, so a stray fetch cannot succeed."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_dom_has_plots_with_points(tmp_path: Path, report_html: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", report_html.as_uri())
    plots = dict(re.findall(r'<svg id="(plot-[a-z]+)"(.*?)</svg>', dom, re.S))
    assert set(plots) == {"plot-iterations", "plot-distribution"}
    assert plots["plot-iterations"].count('class="pt"') == 24
    assert plots["plot-distribution"].count('class="pt"') == 12


def pixels(png: bytes) -> tuple[int, int, int, list[bytes]]:
    """Just enough PNG decoding (8-bit RGB/RGBA, not interlaced) to look at the pixels."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
        header = png[pos + 8:pos + 8 + length] if kind == b"IHDR" else header
        idat += png[pos + 8:pos + 8 + length] if kind == b"IDAT" else b""
        pos += length + 12
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0) and colour_type in (2, 6), "unexpected PNG format"
    bpp = 4 if colour_type == 6 else 3
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = bytes(line)
        rows.append(prev)
    return width, height, bpp, rows


def test_screenshot_shows_the_plot(tmp_path: Path, report_html: Path) -> None:
    shot = tmp_path / "x.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", report_html.as_uri())
    png = shot.read_bytes()
    assert len(png) > 20_000, "screenshot suspiciously small: blank page?"
    width, height, bpp, rows = pixels(png)
    assert (width, height) == (1200, 900)
    colours = {row[i:i + 3] for row in rows for i in range(0, len(row), bpp)}
    assert len(colours) > 50, "screenshot is nearly a single colour"
    first = bytes.fromhex(COLOURS[0][1:])  # the first combination's points and line
    drawn = sum(row[i:i + 3] == first for row in rows for i in range(0, len(row), bpp))
    assert drawn > 100, f"plot colour {COLOURS[0]} barely on screen ({drawn} px)"
