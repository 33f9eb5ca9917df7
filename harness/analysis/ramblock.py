"""QEMU's RAM blocks as `info ramblock` lists them, and the first that differs between
two sides.

With x-ignore-shared only the shared, file-backed RAM is skipped: `pc.bios`, `pc.rom`,
the ACPI tables and option ROMs are still sent, and the target must have blocks of the
same names and sizes, else its load fails with `Unknown ramblock` or `Size mismatch`
(a firmware or NIC ROM of another size after an update).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "   pc.bios    4 KiB  0x0000000008000000 0x0000000000040000 0x0000000000040000"
# (HMP prints the name right-aligned, then page size, offset, used and total; 10.2 adds
# the host address and "ro"/"rw").
ROW = re.compile(r"^\s*(?P<name>\S+)\s+\d+ \w+\s+0x[0-9a-f]+\s+(?P<used>0x[0-9a-f]+)\s+"
                 r"(?P<total>0x[0-9a-f]+)(\s.*)?$")


def parse(text: str) -> dict[str, tuple[int, int]]:
    """Block name -> (used, total) bytes. A block whose total exceeds its use is
    resizeable (the ACPI tables): the target grows it to the source's use, up to its
    own total, where a fixed block must match exactly."""
    return {m["name"]: (int(m["used"], 16), int(m["total"], 16)) for line in text.splitlines()
            if (m := ROW.match(line))}


@dataclass(frozen=True)
class Mismatch:
    name: str
    source_size: int | None  # None: the side has no such block
    target_size: int | None

    def describe(self, source: str, target: str) -> str:
        def size(n: int | None) -> str:
            return "no such block" if n is None else f"{n:#x} bytes"
        return (f"RAM block {self.name!r} differs: {size(self.source_size)} in the source "
                f"{source}, {size(self.target_size)} in the target {target}; the target "
                "would fail to load it: give both sides the same firmware and ROMs "
                "(--firmware, --target-firmware)")


def mismatch(source: dict[str, tuple[int, int]], target: dict[str, tuple[int, int]]
             ) -> Mismatch | None:
    """The first block, in the source's order, that the target lacks or cannot take at
    the source's size (QEMU's ram_load: a fixed block must match, a resizeable one grow
    within its total); then the first the target has alone."""
    for name, (used, total) in source.items():
        theirs = target.get(name)
        if theirs is None:
            return Mismatch(name, used, None)
        fixed = used == total and theirs[0] == theirs[1]
        if (used != theirs[0]) if fixed else used > theirs[1]:
            return Mismatch(name, used, theirs[0])
    extra = next((n for n in target if n not in source), None)
    return None if extra is None else Mismatch(extra, None, target[extra][0])
