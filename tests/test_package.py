"""tapmig installed from its wheel works anywhere: from `/`, with no trace of the clone.

The wheel is built from this tree and installed into a fresh venv (tests.support.wheel);
every command runs the venv's own `tapmig` from `/`.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import Counter
from pathlib import Path

import pytest

import harness
from harness.guest import assets
from harness.vocabulary import AccelChoice
from tests.support import REPO
from tests.support.counting import CountingQemu
from tests.support.wheel import Installed


def test_the_manifest_has_one_source(tapmig_installed: Installed) -> None:
    """The packaged assets.toml is the top-level one: a link in the clone, a copy in the wheel."""
    top = (REPO / "assets.toml").read_bytes()
    assert os.readlink(REPO / "harness" / "guest" / "assets.toml") == "../../assets.toml"
    assert assets.DEFAULT_MANIFEST.read_bytes() == top
    with zipfile.ZipFile(tapmig_installed.wheel) as wheel:
        assert wheel.read("harness/guest/assets.toml") == top


def test_version_and_python_m_harness_from_root(tapmig_installed: Installed) -> None:
    for program, args in (("tapmig", ["--version"]), ("python", ["-m", "harness", "--version"])):
        done = tapmig_installed.run(program, *args)
        assert (done.returncode, done.stdout) == (0, f"tapmig {harness.__version__}\n"), \
            done.stderr


def test_assets_list_from_root(tapmig_installed: Installed, tmp_path: Path) -> None:
    done = tapmig_installed.run("tapmig", "assets", "list", "--json",
                                env={"TAPMIG_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["manifest"].startswith(str(tapmig_installed.venv))  # not the clone's
    assert {a["name"] for a in listing["assets"]} == set(assets.load_manifest().assets)
    text = tapmig_installed.run("tapmig", "assets", "list").stdout
    assert text.startswith("embedded  (embedded)")


def test_metadata_license_and_pins(tapmig_installed: Installed) -> None:
    code = ("import importlib.metadata as m, json; d = m.distribution('tapmig'); "
            "print(json.dumps({'meta': dict(d.metadata.items()), 'requires': d.requires, "
            "'files': [str(f) for f in d.files]}))")
    done = tapmig_installed.run("python", "-c", code)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["meta"]["License-Expression"] == "GPL-2.0-or-later"
    assert f"tapmig-{harness.__version__}.dist-info/licenses/LICENSE" in info["files"]
    assert info["meta"]["Description-Content-Type"] == "text/markdown"
    qmp = next(r for r in info["requires"] if r.startswith("qemu.qmp"))
    assert "<" in qmp, qmp  # pre-1.0 API: bounded above


@pytest.mark.kvm
def test_a_real_run_from_root(tapmig_installed: Installed, tapmig_root_with_tun: None,
                              tapmig_accel: AccelChoice, counting_qemu: CountingQemu,
                              tmp_path: Path) -> None:
    """The installed command migrates a real guest from `/`, and starts QEMU no more
    often than it must: the version check and the capability read once, the KVM probe
    only where no verdict is cached (and KVM is asked about), then the source and the
    target. The QEMU is Debian's behind a script that counts its starts; ICMP only, as
    the traffic is tests/test_traffic.py's subject."""
    counting_qemu.clear()
    probes = 0 if tapmig_accel == "tcg" else counting_qemu.probes_expected()
    out = tmp_path / "out"
    done = tapmig_installed.run("tapmig", "run", "--qemu", str(counting_qemu.path), "--json",
                                "--accel", tapmig_accel, "--out", str(out), "--queues", "1",
                                "--flows", "0", "--tcp", "off", timeout=300,
                                env={"TAPMIG_CACHE": str(counting_qemu.cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert (record["status"], record["qemu"], record["mode"]) == (
        "ok", str(counting_qemu.path), "new-tap")
    assert record["blackout_ms"] is not None and record["stop_ts"] < record["resume_ts"]
    assert json.loads((out / "record.json").read_text()) == record
    assert counting_qemu.starts() == Counter(version=1, capabilities=1, source=1, target=1,
                                             **{"kvm-probe": probes})
