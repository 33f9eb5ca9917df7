"""The one helper every atomic write goes through: whole or nothing, and nothing left over."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import atomic


def test_write_text_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old\n")
    atomic.write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failed_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt), atomic.staged(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_directory_is_published_whole_or_removed(tmp_path: Path) -> None:
    target = tmp_path / "build"
    with atomic.staged(target) as tmp:
        (tmp / "bin").mkdir(parents=True)
        (tmp / "bin" / "qemu").write_text("x")
    assert (target / "bin" / "qemu").read_text() == "x"
    with pytest.raises(OSError), atomic.staged(tmp_path / "other") as tmp:
        (tmp / "bin").mkdir(parents=True)
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_a_resumable_download_keeps_its_part_for_the_next_attempt(tmp_path: Path) -> None:
    target = tmp_path / "disk.iso"
    with pytest.raises(ConnectionError), atomic.staged(target, resumable=True) as part:
        part.write_bytes(b"first half")
        raise ConnectionError("cut")
    assert part == tmp_path / "disk.iso.part" and part.read_bytes() == b"first half"
    with atomic.staged(target, resumable=True) as again:
        assert again == part
        with again.open("ab") as f:
            f.write(b", second half")
    assert target.read_bytes() == b"first half, second half" and not part.exists()
