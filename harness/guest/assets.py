"""Guest assets: the assets.toml manifest, a verified download cache, and --guest parsing.

Assets are large upstream files pinned by sha256. They are cached where no commit
picks them up (outside the clone, or in a directory of it that git ignores) and
checked before first use. A file with the wrong hash is moved to a
quarantine directory rather than deleted, so the user can inspect what the
mirror served, and it can never be booted by accident.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import urlsplit

import requests

from harness import atomic
from harness.cache import default_cache
from harness.errors import AssetCorrupt, DownloadFailed, UsageError

KINDS = ("iso", "kernel", "initrd", "embedded")
BOOT_ROLES = ("embedded", "iso", "kernel")
_CLONE = Path(__file__).resolve().parents[2]
# Package data, so an installed tapmig finds it from any directory. In the clone it
# is a symlink to the top-level assets.toml, the one source, which the wheel copies.
DEFAULT_MANIFEST: Traversable = files("harness.guest") / "assets.toml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class Asset:
    """One manifest entry; url and sha256 are None only for the locally built kind."""

    name: str
    kind: str
    description: str
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The parsed assets.toml: assets by name, and each guest as role -> asset name."""

    path: str
    default: str
    assets: dict[str, Asset]
    guests: dict[str, dict[str, str]]

    def asset(self, name: str) -> Asset:
        """Look up an asset by the name a user typed, listing the choices if it is wrong."""
        if name not in self.assets:
            raise UsageError(f"unknown asset {name!r}; choose one of: {', '.join(self.assets)}")
        return self.assets[name]


@dataclass(frozen=True)
class GuestSpec:
    """What --guest selected: manifest assets by role, or the user's own files by role.

    kind is the boot method: "embedded", "iso" or "kernel" (direct kernel boot).
    """

    name: str
    kind: str
    assets: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


class _Transient(Exception):
    """A fault worth retrying: 5xx, a cut-short transfer, a refused resume; status is
    the HTTP error status, if that was the fault."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class _Refused(Exception):
    """An HTTP 4xx: the URL itself is wrong, so no retry can help."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason = status, reason


def load_manifest(source: Path | Traversable = DEFAULT_MANIFEST) -> Manifest:
    """Parse and validate assets.toml, so a typo fails here and not mid-download or mid-boot."""
    path = str(source)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read asset manifest {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}; fix the syntax") from exc
    assets = {name: _asset(path, name, e) for name, e in _tables(path, data, "assets").items()}
    guests = {
        name: _guest(path, name, roles, assets)
        for name, roles in _tables(path, data, "guests").items()
    }
    default = data.get("default")
    if not isinstance(default, str) or default not in guests:
        raise UsageError(
            f"{path}: 'default' must name a guest ({', '.join(guests)}), got {default!r}"
        )
    return Manifest(path, default, assets, guests)


def _tables(path: str, data: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """The [key.NAME] tables of the manifest, with names safe to use as directory names."""
    tables = data.get(key)
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise UsageError(f"{path}: expected one [{key}.NAME] table per entry")
    for name in tables:
        if not _NAME.fullmatch(name):
            raise UsageError(f"{path}: {key} name {name!r} may only use letters, digits, . _ -")
    return tables


def _asset(path: str, name: str, entry: dict[str, Any]) -> Asset:
    """Validate one [assets.NAME] entry; every message names the entry and the field."""

    def bad(key: str, why: str) -> NoReturn:
        raise UsageError(f"{path}: entry {name!r}: field {key!r} {why}")

    kind = entry.get("kind")
    needed = ["kind", "description"] + ([] if kind == "embedded" else ["url", "sha256"])
    for key in needed:
        if key not in entry:
            bad(key, "is missing")
        if not isinstance(entry[key], str) or not entry[key]:
            bad(key, "must be a non-empty string")
    if kind not in KINDS:
        bad("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    for key in sorted(entry.keys() - set(needed)):
        bad(key, f"is not used by kind {kind!r}; remove it")
    url, sha = entry.get("url"), entry.get("sha256")
    if sha is not None and not _SHA256.fullmatch(sha):
        bad("sha256", f"must be 64 hex digits, got {len(sha) if len(sha) != 64 else 'non-hex'}")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or not _filename(url):
            bad("url", f"must be an http(s) URL ending in a plain file name, got {url!r}")
    return Asset(name, kind, entry["description"], url, sha.lower() if sha else None)


def _guest(
    path: str, name: str, roles: dict[str, Any], assets: dict[str, Asset]
) -> dict[str, str]:
    """Validate one [guests.NAME] table: roles are asset kinds, with one way to boot."""
    where = f"{path}: guest {name!r}"
    for role, ref in roles.items():
        if role not in KINDS:
            raise UsageError(f"{where}: unknown role {role!r}; use one of {', '.join(KINDS)}")
        if not isinstance(ref, str) or ref not in assets or assets[ref].kind != role:
            raise UsageError(f"{where}: {role!r} must name an asset of kind {role!r}, got {ref!r}")
    boots = [role for role in BOOT_ROLES if role in roles]
    if len(boots) != 1 or ("initrd" in roles and boots != ["kernel"]):
        raise UsageError(
            f"{where}: needs exactly one of {', '.join(BOOT_ROLES)}; initrd needs kernel"
        )
    return dict(roles)


def _filename(url: str) -> str:
    """The last URL path segment, if it is a plain file name (never '..' or empty)."""
    name = PurePosixPath(urlsplit(url).path).name
    return name if _NAME.fullmatch(name) else ""


def parse_guest(spec: str, manifest: Manifest) -> GuestSpec:
    """Turn a --guest value into a GuestSpec; kernel:PATH[,initrd:PATH] bypasses the manifest."""
    if ":" not in spec:
        if spec not in manifest.guests:
            known = ", ".join([*manifest.guests, "kernel:PATH[,initrd:PATH]"])
            raise UsageError(f"unknown guest {spec!r}; choose one of: {known}")
        roles = manifest.guests[spec]
        kind = next(role for role in BOOT_ROLES if role in roles)
        return GuestSpec(spec, kind, assets=dict(roles))
    usage = f"bad guest {spec!r}; write it as kernel:PATH or kernel:PATH,initrd:PATH"
    paths: dict[str, Path] = {}
    for item in spec.split(","):
        role, _, value = item.partition(":")
        if role not in ("kernel", "initrd") or role in paths or not value:
            raise UsageError(usage)
        paths[role] = Path(value).expanduser().resolve()
    if "kernel" not in paths:
        raise UsageError(usage)
    for role, file in paths.items():
        if not file.is_file():
            raise UsageError(f"guest {spec!r}: {role} file {file} does not exist; pass a file")
    return GuestSpec("custom-kernel", "kernel", paths=paths)


def cache_dir(override: Path | None = None) -> Path:
    """The cache root: override, $TAPMIG_CACHE, $XDG_CACHE_HOME/tapmig, else ~/.cache/tapmig.

    Big downloads must never end up in a commit, so a root inside the git clone is
    refused unless git ignores it. The CI jobs keep theirs in the project directory
    (GitLab caches only paths there), in `.tapmig-cache/`, which .gitignore lists.
    """
    root = (override or default_cache()).expanduser().resolve()
    if (_CLONE / ".git").exists() and root.is_relative_to(_CLONE) and not _git_ignores(root):
        raise UsageError(f"cache {root} is inside the clone {_CLONE} and git does not ignore "
                         "it; add it to .gitignore or set TAPMIG_CACHE elsewhere")
    return root


def _git_ignores(directory: Path) -> bool:
    """Whether the clone's git ignores `directory` (which need not exist yet); False where
    git cannot tell (no git, or a clone it refuses to read)."""
    try:
        # The trailing slash: a pattern such as `/.tapmig-cache/` matches directories only.
        done = subprocess.run(["git", "-C", str(_CLONE), "check-ignore", "-q", "--",
                               f"{directory}/"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def asset_path(asset: Asset, cache: Path) -> Path:
    """Where fetch() keeps (and an offline user should place) the asset's file."""
    return cache / "assets" / asset.name / _filename(_pinned(asset)[0])


def _pinned(asset: Asset) -> tuple[str, str]:
    """The url and sha256 of a downloadable asset; the embedded guest has neither."""
    if asset.url is None or asset.sha256 is None:
        raise UsageError(f"asset {asset.name!r} is built locally; run `tapmig guest build`")
    return asset.url, asset.sha256


def fetch(
    asset: Asset,
    cache: Path,
    *,
    offline: bool = False,
    timeout: float = 30,
    retries: int = 3,
    progress: bool = True,
    backoff: float = 1.0,
) -> Path:
    """Return a verified local copy of asset, downloading it only if it is not cached.

    A cached file is hashed on first use; a .verified stamp (sha256, size, mtime)
    then spares rehashing a large ISO on every run until the file changes.
    offline (or TAPMIG_OFFLINE=1) never touches the network. timeout bounds the
    connect and each read; retries counts attempts after the first, spaced
    backoff * 2**n seconds apart.
    """
    url, sha = _pinned(asset)
    target = asset_path(asset, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = target.with_name(target.name + ".verified")
    with _locked(target):
        if target.exists():
            if not stamp.exists() or stamp.read_text() != _stamp_of(target, sha):
                _verify(asset, sha, target, target, "cached")
                atomic.write_text(stamp, _stamp_of(target, sha))
            return target
        if offline or os.environ.get("TAPMIG_OFFLINE", "") not in ("", "0"):
            raise UsageError(f"offline and {asset.name} is not cached: download {url} to {target}")
        with atomic.staged(target, resumable=True) as part:
            _download(url, part, target, timeout, retries, backoff,
                      _Progress(asset.name, progress))
            _verify(asset, sha, part, target, "downloaded")
        atomic.write_text(stamp, _stamp_of(target, sha))
    return target


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Serialise fetchers of one asset (e.g. pytest-xdist workers) so none shares a .part."""
    with target.with_name(target.name + ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _stamp_of(file: Path, sha: str) -> str:
    """What .verified records: any rewrite of the file changes size or mtime, forcing a rehash."""
    info = file.stat()
    return f"{sha} {info.st_size} {info.st_mtime_ns}\n"


def _verify(asset: Asset, sha: str, file: Path, target: Path, origin: str) -> None:
    """Hash file; on a mismatch move it to quarantine, out of fetch()'s reach, and say so."""
    with file.open("rb") as handle:
        got = hashlib.file_digest(handle, "sha256").hexdigest()
    if got == sha:
        return
    quarantine = target.parent.parent / "quarantine" / f"{asset.name}-{got[:12]}-{target.name}"
    quarantine.parent.mkdir(exist_ok=True)
    file.replace(quarantine)
    raise AssetCorrupt(asset.name, origin, sha, got, str(quarantine))


def _download(
    url: str, part: Path, target: Path, timeout: float, retries: int, backoff: float, bar: _Progress
) -> None:
    """Fill part with the whole file, retrying transient faults and resuming where possible."""
    problem = "no attempt made"
    status: int | None = None  # the last attempt's HTTP error status, if it had one
    with requests.Session() as session:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _attempt(session, url, part, timeout, bar)
                return
            except (*_TRANSIENT, _Transient) as exc:
                problem = " ".join(str(exc).split())
                status = exc.status if isinstance(exc, _Transient) else None
            except _Refused as exc:
                raise DownloadFailed(f"{url} returned HTTP {exc.status} {exc.reason}; fix it "
                                     "in assets.toml", url, exc.status, str(exc),
                                     attempt + 1, str(target)) from None
            finally:
                bar.end()
    raise DownloadFailed(
        f"could not download {url} in {retries + 1} attempts ({problem}); "
        f"check the network, or download it yourself to {target}",
        url, status, problem, retries + 1, str(target))


def _attempt(
    session: requests.Session, url: str, part: Path, timeout: float, bar: _Progress
) -> None:
    """One GET: append to part via HTTP Range when the server resumes (206), else restart."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # so byte counts match Content-Length
    if have:
        headers["Range"] = f"bytes={have}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        status = resp.status_code
        if status >= 500:
            raise _Transient(f"HTTP {status} {resp.reason}", status)
        resumed = status == 206
        if status == 416 or (
            resumed and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        ):
            part.unlink()
            raise _Transient(f"server could not resume at byte {have}; restarting")
        if status >= 400:
            raise _Refused(status, resp.reason)
        start = have if resumed else 0
        length = resp.headers.get("Content-Length", "")
        total = start + int(length) if length.isdigit() else None
        bar.start(url, start, total)
        with part.open("ab" if resumed else "wb") as out:
            for chunk in resp.iter_content(1 << 16):
                out.write(chunk)
                bar.advance(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Transient(f"transfer cut short at {size} of {total} bytes")


class _Progress:
    """Progress on stderr: a line redrawn in place on a tty, one line per attempt otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.tty = label, enabled, enabled and sys.stderr.isatty()
        self.done, self.of, self.drawn = 0, "", 0.0

    def start(self, url: str, done: int, total: int | None) -> None:
        self.done, self.of = done, f" of {total / 2**20:.1f}" if total else ""
        if self.enabled and not self.tty:
            resume = f" from byte {done}" if done else ""
            print(f"tapmig: downloading {url}{resume}", file=sys.stderr)

    def advance(self, count: int) -> None:
        self.done += count
        if self.tty and time.monotonic() - self.drawn > 0.2:
            self.drawn = time.monotonic()
            line = f"\r{self.label}: {self.done / 2**20:.1f}{self.of} MiB"
            print(line, end="", file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.drawn:
            print(file=sys.stderr)
            self.drawn = 0.0
