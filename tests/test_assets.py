"""Asset manifest, cache and download tests against a real loopback HTTP server.

No mocks of requests: the download code must cope with what a real socket does
(a dropped connection, a stall, a 206), so every fault here is a real one.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from harness.errors import EXIT_FAILED, AssetCorrupt, DownloadFailed, TapmigError
from harness.guest import assets
from harness.guest.assets import (
    Asset,
    asset_path,
    cache_dir,
    fetch,
    load_manifest,
    parse_guest,
)

BODY = bytes(range(256)) * 800  # 200 KiB: several read chunks, so cuts land mid-file

UPSTREAM = {
    "alpine-iso": (
        "https://dl-cdn.alpinelinux.org/alpine/v3.22/releases/x86_64/"
        "alpine-standard-3.22.1-x86_64.iso",
        "96d1b44ea1b8a5a884f193526d92edb4676054e9fa903ad2f016441a0fe13089",
    ),
    "fedora-kernel": (
        "https://archives.fedoraproject.org/pub/archive/fedora/linux/releases"
        "/31/Server/x86_64/os/images/pxeboot/vmlinuz",
        "d4738d03dbbe083ca610d0821d0a8f1488bebbdccef54ce33e3adb35fda00129",
    ),
    "fedora-initrd": (
        "https://archives.fedoraproject.org/pub/archive/fedora/linux/releases"
        "/31/Server/x86_64/os/images/pxeboot/initrd.img",
        "277cd6c7adf77c7e63d73bbb2cded8ef9e2d3a2f100000e92ff1f8396513cd8b",
    ),
}


@dataclass
class Route:
    """How the test server answers one path."""

    body: bytes
    failures: int = 0  # answer 500 to this many requests first
    cut_first: int | None = None  # on the first request, drop the connection after N bytes
    stall: float = 0.0  # seconds to sit on every request, then hang up without answering
    ranges: bool = True  # honour Range with 206; False ignores it and sends 200


class Server(ThreadingHTTPServer):
    """A loopback server that records (path, Range header) for each request.

    Its handler threads are joined when it closes (a stalled one is woken first), so no
    test leaves a thread behind for a later one's before-and-after count."""

    daemon_threads = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.closing = threading.Event()
        self.routes: dict[str, Route] = {}
        self.hits: list[tuple[str, str | None]] = []

    def serve(self, name: str, route: Route, sha256: str | None = None) -> Asset:
        """Publish route at /NAME.bin and describe it as an asset pinned to sha256."""
        self.routes[f"/{name}.bin"] = route
        url = f"http://127.0.0.1:{self.server_address[1]}/{name}.bin"
        digest = sha256 or hashlib.sha256(route.body).hexdigest()
        return Asset(name, "iso", "test asset", url, digest)


class Handler(BaseHTTPRequestHandler):
    """Serves each Route, misbehaving on cue so every client fault path is a real one."""

    def do_GET(self) -> None:
        server = cast(Server, self.server)
        server.hits.append((self.path, self.headers.get("Range")))
        seen = sum(path == self.path for path, _ in server.hits)
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if route.stall:
            server.closing.wait(route.stall)
            self.close_connection = True
            return
        if seen <= route.failures:
            self.send_error(500)
            return
        wanted = self.headers.get("Range")
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted and route.ranges else 0
        if start >= len(route.body):
            self.send_error(416)
            return
        body = route.body[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}"
            )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if seen == 1 and route.cut_first is not None:
            self.wfile.write(body[: route.cut_first])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep pytest output clean; the tests read server.hits instead."""


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("TAPMIG_OFFLINE", "TAPMIG_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.closing.set()
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def part_of(asset: Asset, cache: Path) -> Path:
    target = asset_path(asset, cache)
    return target.with_name(target.name + ".part")


def quarantined(cache: Path) -> list[Path]:
    return sorted((cache / "assets" / "quarantine").iterdir())


# --- downloads -------------------------------------------------------------------------


def test_fetch_stores_verified_file_and_reuses_it(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY))
    path = fetch(asset, cache, progress=False)
    assert path == cache / "assets" / "disk" / "disk.bin"
    assert path.read_bytes() == BODY
    assert not part_of(asset, cache).exists()
    assert fetch(asset, cache, progress=False) == path
    assert len(server.hits) == 1


def test_download_with_wrong_hash_is_quarantined(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY), sha256="0" * 64)
    with pytest.raises(AssetCorrupt) as err:
        fetch(asset, cache, progress=False)
    e = err.value
    assert (e.asset, e.origin, e.expected) == ("disk", "downloaded", "0" * 64)
    assert e.actual == hashlib.sha256(BODY).hexdigest()
    assert e.exit_code == EXIT_FAILED
    assert not asset_path(asset, cache).exists()
    assert not part_of(asset, cache).exists()
    [moved] = quarantined(cache)
    assert e.quarantine == str(moved)
    assert moved.read_bytes() == BODY


def test_cached_file_that_changed_is_rehashed_and_quarantined(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY))
    path = fetch(asset, cache, progress=False)
    path.write_bytes(b"tampered")
    with pytest.raises(AssetCorrupt) as err:
        fetch(asset, cache, offline=True)
    tampered = hashlib.sha256(b"tampered").hexdigest()
    assert (err.value.origin, err.value.actual) == ("cached", tampered)
    assert not path.exists()
    assert [str(p) for p in quarantined(cache)] == [err.value.quarantine]
    assert [p.read_bytes() for p in quarantined(cache)] == [b"tampered"]


def test_truncated_transfer_is_resumed(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY, cut_first=150_000))
    path = fetch(asset, cache, progress=False, backoff=0)
    assert path.read_bytes() == BODY
    [(_, first), (_, second)] = server.hits
    assert first is None
    # requests keeps only whole read chunks of a cut stream, so the resume point is a
    # chunk boundary at or below the cut, not necessarily the cut itself.
    assert second is not None
    assert 0 < int(second.removeprefix("bytes=").rstrip("-")) <= 150_000


def test_truncated_transfer_restarts_when_server_ignores_range(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY, cut_first=150_000, ranges=False))
    assert fetch(asset, cache, progress=False, backoff=0).read_bytes() == BODY
    assert len(server.hits) == 2


def test_partial_file_from_earlier_run_is_resumed(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY))
    part = part_of(asset, cache)
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:1000])
    assert fetch(asset, cache, progress=False).read_bytes() == BODY
    assert server.hits == [("/disk.bin", "bytes=1000-")]


def test_unresumable_partial_file_is_restarted(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY))
    part = part_of(asset, cache)
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY + b"junk")  # longer than the file: the server answers 416
    assert fetch(asset, cache, progress=False, backoff=0).read_bytes() == BODY
    assert [rng for _, rng in server.hits] == [f"bytes={len(BODY) + 4}-", None]


def test_404_fails_at_once_naming_the_url(server: Server, cache: Path) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/gone.bin"
    asset = Asset("gone", "iso", "test", url, "0" * 64)
    with pytest.raises(DownloadFailed) as err:
        fetch(asset, cache, progress=False, retries=3)
    e = err.value
    assert (e.url, e.status, e.attempts) == (url, 404, 1)
    assert e.target == str(asset_path(asset, cache))
    assert e.exit_code == EXIT_FAILED
    assert len(server.hits) == 1


def test_server_error_is_retried(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY, failures=1))
    assert fetch(asset, cache, progress=False, backoff=0.01).read_bytes() == BODY
    assert len(server.hits) == 2


def test_persistent_server_error_gives_up_after_retries(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY, failures=99))
    with pytest.raises(DownloadFailed) as err:
        fetch(asset, cache, progress=False, retries=2, backoff=0.01)
    assert (err.value.status, err.value.attempts) == (500, 3)
    assert err.value.reason.startswith("HTTP 500")
    assert len(server.hits) == 3
    assert not asset_path(asset, cache).exists()


def test_slow_server_times_out(server: Server, cache: Path) -> None:
    """The bound is the point: each of the two attempts must end at the 0.3 s timeout.
    One the timeout did not cut alone takes the whole 3 s stall, so anything under 3 s
    proves both were cut, with 2.4 s to spare for a loaded host."""
    asset = server.serve("disk", Route(BODY, stall=3.0))
    began = time.monotonic()
    with pytest.raises(DownloadFailed) as err:
        fetch(asset, cache, progress=False, timeout=0.3, retries=1, backoff=0)
    assert time.monotonic() - began < 3.0
    assert (err.value.status, err.value.attempts) == (None, 2)  # no HTTP error: a stall
    assert "timed out" in err.value.reason
    assert len(server.hits) == 2


def test_offline_without_cached_file_fails_fast(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY))
    with pytest.raises(TapmigError) as err:
        fetch(asset, cache, offline=True)
    assert str(asset.url) in str(err.value)
    assert str(asset_path(asset, cache)) in str(err.value)
    assert server.hits == []


def test_offline_env_var_is_honoured(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPMIG_OFFLINE", "1")
    asset = server.serve("disk", Route(BODY))
    with pytest.raises(TapmigError, match="offline"):
        fetch(asset, cache)
    assert server.hits == []


def test_offline_uses_cached_file(server: Server, cache: Path) -> None:
    asset = server.serve("disk", Route(BODY))
    path = fetch(asset, cache, progress=False)
    assert fetch(asset, cache, offline=True) == path
    assert len(server.hits) == 1


def test_progress_goes_to_stderr(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asset = server.serve("disk", Route(BODY))
    fetch(asset, cache)
    captured = capsys.readouterr()
    assert f"downloading {asset.url}" in captured.err
    assert captured.out == ""


def test_progress_redraws_in_place_on_a_tty(
    server: Server,
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fetch(server.serve("disk", Route(BODY)), cache)
    err = capsys.readouterr().err
    assert err.startswith("\rdisk: ")
    assert " of 0.2 MiB" in err
    assert err.endswith("MiB\n")


def test_embedded_asset_is_not_downloadable(cache: Path) -> None:
    embedded = load_manifest(assets.DEFAULT_MANIFEST).asset("embedded")
    with pytest.raises(TapmigError, match="tapmig guest build"):
        fetch(embedded, cache)


# --- cache location ----------------------------------------------------------------------


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tapmig"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tapmig"
    monkeypatch.setenv("TAPMIG_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_cache_dir_inside_the_clone_is_refused_unless_git_ignores_it() -> None:
    """A cache of ISOs in the clone must never reach a commit: refused where git would
    pick it up, accepted where .gitignore keeps it out, as the CI jobs' `.tapmig-cache/`
    (GitLab caches only paths inside the project)."""
    clone = Path(assets.__file__).resolve().parents[2]
    with pytest.raises(TapmigError, match=r"git does not ignore it; add it to \.gitignore"):
        cache_dir(clone / "cache")
    with pytest.raises(TapmigError, match="set TAPMIG_CACHE elsewhere"):
        cache_dir(clone / "harness" / "cache")
    assert cache_dir(clone / ".tapmig-cache") == clone / ".tapmig-cache"
    assert cache_dir(clone / ".tapmig-cache" / "x") == clone / ".tapmig-cache" / "x"


# --- manifest ----------------------------------------------------------------------------

VALID = f"""
default = "k"

[assets.kern]
kind = "kernel"
url = "https://example.org/vmlinuz"
sha256 = "{"ab" * 32}"
description = "a kernel"

[guests.k]
kernel = "kern"
"""


def test_repo_manifest_pins_the_upstream_assets() -> None:
    manifest = load_manifest(assets.DEFAULT_MANIFEST)
    for name, (url, sha256) in UPSTREAM.items():
        assert (manifest.assets[name].url, manifest.assets[name].sha256) == (url, sha256)
    assert {a.kind for a in manifest.assets.values()} == set(assets.KINDS)
    assert manifest.default == "embedded"
    assert manifest.assets["embedded"].url is None


def test_small_valid_manifest_loads(tmp_path: Path) -> None:
    path = tmp_path / "assets.toml"
    path.write_text(VALID)
    assert load_manifest(path).guests == {"k": {"kernel": "kern"}}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (f'sha256 = "{"ab" * 32}"\n', "", "entry 'kern': field 'sha256' is missing"),
        ("ab" * 32, "a" * 63, "entry 'kern': field 'sha256' must be 64 hex digits, got 63"),
        ("ab" * 32, "xy" * 32, "field 'sha256' must be 64 hex digits, got non-hex"),
        ('kind = "kernel"', 'kind = "floppy"', "entry 'kern': field 'kind' must be one of"),
        ("https://example.org/vmlinuz", "ftp://example.org/vmlinuz", "field 'url' must be"),
        ("https://example.org/vmlinuz", "https://example.org/", "field 'url' must be"),
        ('description = "a kernel"', 'description = ""', "field 'description' must be"),
        ('description = "a kernel"', 'description = "k"\ncolour = "red"', "field 'colour'"),
        ('kind = "kernel"', 'kind = "kernel', "invalid TOML"),
        ('default = "k"', 'default = "nope"', "'default' must name a guest (k)"),
        ('kernel = "kern"', 'kernel = "other"', "guest 'k': 'kernel' must name an asset"),
        ('kernel = "kern"', 'initrd = "kern"', "guest 'k': 'initrd' must name an asset"),
        ("[guests.k]", "[guests.'a:b']", "guests name 'a:b'"),
    ],
)
def test_malformed_manifest_names_the_problem(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = tmp_path / "assets.toml"
    assert old in VALID
    path.write_text(VALID.replace(old, new))
    with pytest.raises(TapmigError) as err:
        load_manifest(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_unknown_asset_lists_known_ones() -> None:
    with pytest.raises(TapmigError, match="alpine-iso, fedora-kernel"):
        load_manifest(assets.DEFAULT_MANIFEST).asset("debian")


# --- --guest parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind", "roles"),
    [
        ("embedded", "embedded", {"embedded": "embedded"}),
        ("alpine-iso", "iso", {"iso": "alpine-iso"}),
        ("fedora", "kernel", {"kernel": "fedora-kernel", "initrd": "fedora-initrd"}),
    ],
)
def test_parse_known_guests(spec: str, kind: str, roles: dict[str, str]) -> None:
    guest = parse_guest(spec, load_manifest(assets.DEFAULT_MANIFEST))
    assert (guest.name, guest.kind, guest.assets, guest.paths) == (spec, kind, roles, {})


def test_parse_local_kernel_and_initrd(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(b"k")
    (tmp_path / "initrd").write_bytes(b"i")
    manifest = load_manifest(assets.DEFAULT_MANIFEST)
    guest = parse_guest(f"kernel:{tmp_path}/bzImage,initrd:{tmp_path}/initrd", manifest)
    assert guest.kind == "kernel"
    assert guest.assets == {}
    assert guest.paths == {"kernel": tmp_path / "bzImage", "initrd": tmp_path / "initrd"}
    assert parse_guest(f"kernel:{tmp_path}/bzImage", manifest).paths.keys() == {"kernel"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("kernel:/nonexistent/bzImage", "kernel file /nonexistent/bzImage does not exist"),
        ("initrd:/nonexistent/initrd", "write it as kernel:PATH"),
        ("kernel:", "write it as kernel:PATH"),
        ("disk:/x", "write it as kernel:PATH"),
        ("debian", "unknown guest 'debian'; choose one of: embedded, alpine-iso, fedora, kernel:"),
    ],
)
def test_parse_bad_guest(spec: str, expected: str) -> None:
    with pytest.raises(TapmigError) as err:
        parse_guest(spec, load_manifest(assets.DEFAULT_MANIFEST))
    assert expected in str(err.value)
