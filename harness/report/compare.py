"""The regression verdict between two reports, and the check that they are alike at all.

Timings from a KVM runner and a TCG one, or from two CPU models, differ for
reasons that have nothing to do with the code under test; comparing them would
flag or hide regressions at random. So `compare` first checks the context both
reports record, and refuses unlike runs unless told otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.errors import NotComparable, UsageError
from harness.report.model import (
    COUNTED,
    JUDGED,
    TRAFFIC_JUDGED,
    UNKNOWN,
    Combination,
    Count,
    Meta,
    Report,
    Summary,
)
from harness.report.phase_compare import PhaseMove, most, moves, shrank_most
from harness.report.render import ci_text
from harness.report.stats import rate_test

# Meta fields that must agree, with the words the message uses for them.
ALIKE = {"accel": "accelerator", "host_kernel": "host kernel", "cpu_model": "CPU model",
         "guest": "guest", "prober": "prober", "queues": "queue layout"}
INTERVAL_TOLERANCE = 0.05  # achieved probe spacing jitters a little; 0.9 vs 1 ms is a change


@dataclass
class Judgement:
    """One figure of one matched combination."""

    combination: str
    metric: str
    regressed: bool
    baseline_median: float | None
    current_median: float | None
    why: str
    min_max_only: bool  # an interval it rests on is just [min, max] of few runs
    phase: str | None = None  # the phase that moved most, where the line names one
    improved: bool = False  # moved the good way beyond the threshold and the noise


@dataclass
class Verdict:
    """The lines say why, per combination and figure, so CI logs need no second look."""

    regressed: bool
    lines: list[str]
    judgements: list[Judgement] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # only with allow_mismatch
    unchecked: list[str] = field(default_factory=list)  # context a report does not record
    phases: list[PhaseMove] = field(default_factory=list)  # per phase, baseline vs current
    improved: bool = False  # some figure improved and none regressed

    @property
    def word(self) -> str:
        """REGRESSED (exit 1), IMPROVED or no regression (exit 0)."""
        return ("REGRESSED" if self.regressed else "IMPROVED" if self.improved
                else "no regression")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_threshold(text: str) -> float:
    """'10%' and '0.1' both mean ten percent; a bare number above 1 is almost surely a typo."""
    raw = text.strip()
    try:
        value = float(raw.removesuffix("%")) / (100 if raw.endswith("%") else 1)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value > 1 and not raw.endswith("%")):
        raise UsageError(f"bad threshold {text!r}: give a non-negative percentage like '10%' "
                         "or a fraction like '0.1'")
    return value


def differences(base: Meta, cur: Meta) -> tuple[list[str], list[str]]:
    """(what differs, what one side does not record): older reports lack some fields."""
    found, unchecked = [], []
    for attr, label in ALIKE.items():
        b, c = getattr(base, attr), getattr(cur, attr)
        if UNKNOWN in (b, c):
            unchecked.append(label)
        elif b != c:
            found.append(f"{label} {b} vs {c}")
    b_ms, c_ms = base.probe_interval_ms, cur.probe_interval_ms
    if b_ms is None or c_ms is None:
        unchecked.append("probe interval")
    elif abs(b_ms - c_ms) > INTERVAL_TOLERANCE * max(b_ms, c_ms):
        found.append(f"probe interval {b_ms:g} ms vs {c_ms:g} ms")
    return found, unchecked


def _partner(b: Combination, base: list[Combination],
             cur: list[Combination]) -> Combination | None:
    """Same mode, the same kind of pair (a binary to itself, or an update between the same
    versions) on the same machine type where both record one, and version (and path if
    versions repeat); else the only build on each side."""
    same_mode = [c for c in cur if c.mode == b.mode and _same_pair(b, c)]
    same_ver = [c for c in same_mode if c.qemu_version == b.qemu_version]
    for cands in ([c for c in same_ver if c.qemu == b.qemu], same_ver):
        if len(cands) == 1:
            return cands[0]
    if len(same_mode) == 1 and sum(x.mode == b.mode for x in base) == 1:
        return same_mode[0]
    return None


Move = Literal["worse", "better", "same"]


def _same_pair(b: Combination, c: Combination) -> bool:
    """An A -> B update is judged against A -> B only, never against A -> A."""
    if bool(b.target_qemu) != bool(c.target_qemu):
        return False
    if b.target_qemu and b.target_qemu_version != c.target_qemu_version:
        return False
    return not (b.machine and c.machine and b.machine != c.machine)


def _judge(b: Summary, c: Summary, threshold: float) -> tuple[Move, str]:
    """Worse (or better) by more than the threshold AND with the medians' intervals apart."""
    bm, cm = b.median, c.median
    if bm is None:
        return "same", "no baseline measurement, not compared"
    if cm is None:
        return "worse", f"REGRESSED: no successful measurement now (baseline median {bm:.1f} ms)"
    change = f"median {bm:.1f} -> {cm:.1f} ms" + (f" ({(cm - bm) / bm:+.1%})" if bm else "")
    over, under = cm > bm * (1 + threshold), cm < bm * (1 - threshold)
    limit = (f"above threshold +{threshold:.1%}" if over else
             f"below threshold -{threshold:.1%}" if under else f"within threshold +{threshold:.1%}")
    if b.ci is None or c.ci is None:
        move: Move = "worse" if over else "better" if under else "same"
        return move, f"{WORDS[move]}: {change}, {limit}; CI undefined (n<3), threshold alone used"
    cis = f"CI {ci_text(c.ci)} vs baseline {ci_text(b.ci)}"
    apart = (over and c.ci[0] > b.ci[1]) or (under and c.ci[1] < b.ci[0])
    why = (f"{limit} and {cis} do not overlap" if apart else
           f"{limit} but {cis} overlap: noise" if over or under else limit)
    if b.ci_is_range or c.ci_is_range:
        why += f" (n={b.n} vs {c.n}: an interval is just [min, max])"
    move = ("worse" if over else "better") if apart else "same"
    return move, f"{WORDS[move]}: {change}, {why}"


WORDS: dict[Move, str] = {"worse": "REGRESSED", "better": "IMPROVED", "same": "ok"}
ALPHA = 0.05  # each direction of the exact test of two counts


def judge_count(b: Count, c: Count) -> tuple[Move, str]:
    """Two counts' rates per run, by the exact conditional test (harness.report.stats)."""
    more, less = rate_test(b.total, b.runs, c.total, c.runs)
    move: Move = "worse" if more < ALPHA else "better" if less < ALPHA else "same"
    p = more if move == "worse" else less if move == "better" else min(more, less)
    return move, (f"{WORDS[move]}: {b.total} in {b.runs} runs -> {c.total} in {c.runs} "
                  f"({b.rate:g} -> {c.rate:g} per run, 95% CI {ci_text(c.ci, 2)} vs "
                  f"baseline {ci_text(b.ci, 2)}), exact test p={p:.3g}"
                  + ("" if move != "same" else f", not below {ALPHA:g}"))


def _pairs(base: list[Combination], cur: list[Combination]) -> list[tuple[Combination,
                                                                          Combination]]:
    """Each baseline combination with its counterpart; each current one used once."""
    pairs: list[tuple[Combination, Combination]] = []
    for b in base:
        free = [c for c in cur if all(c is not taken for _, taken in pairs)]
        if (p := _partner(b, base, free)) is not None:
            pairs.append((b, p))
    if not pairs:
        def desc(cs: list[Combination]) -> str:
            return ", ".join(f"{c.mode} {c.qemu_version}" for c in cs) or "no runs"
        raise UsageError(f"reports have no combination in common: baseline has {desc(base)}, "
                         f"current has {desc(cur)}; compare runs of the same modes and builds")
    return pairs


def _context_notes(baseline: Report, current: Report, allow_mismatch: bool,
                   ) -> tuple[list[str], list[str], list[str]]:
    """(differences, unchecked, note lines); unlike runs raise NotComparable unless allowed."""
    found, unchecked = differences(baseline.meta, current.meta)
    if found and not allow_mismatch:
        raise NotComparable(found)
    notes = [f"note: {name} report is PARTIAL"
             for name, rep in (("baseline", baseline), ("current", current)) if rep.partial]
    notes += [f"note: compared despite different {d} (--allow-mismatch)" for d in found]
    if unchecked:
        notes.append(f"note: not checked, a report does not record it: {', '.join(unchecked)}")
    return found, unchecked, notes


def compare(baseline: Report, current: Report, threshold: float,
            allow_mismatch: bool = False) -> Verdict:
    """Regression = worse by more than the threshold AND outside the noise of both runs;
    each pair's phases say which moved, and a regression names the one that moved most."""
    base, cur = baseline.combinations, current.combinations
    found, unchecked, lines = _context_notes(baseline, current, allow_mismatch)
    pairs = _pairs(base, cur)
    judgements, moved = [], []
    for b, c in pairs:
        label = f"{b.mode} {b.build}" + ("" if b.build == c.build else f" -> {c.build}")
        phase_moves, phase_lines = moves(label, b, c)
        traffic = {m: w for m, w in TRAFFIC_JUDGED.items() if m in b.metrics and m in c.metrics}
        for metric, what in {**JUDGED, **traffic}.items():
            bs, cs = b.metrics[metric], c.metrics[metric]
            move, why = _judge(bs, cs, threshold)
            phase, words = (shrank_most(phase_moves, metric) if move == "better"
                            else most(phase_moves, metric, move == "worse"))
            judgements.append(Judgement(label, metric, move == "worse", bs.median, cs.median,
                                        why + words, bs.ci_is_range or cs.ci_is_range, phase,
                                        move == "better"))
            lines.append(f"{label}: {what}: {why}{words}")
        for metric, what in COUNTED.items():
            if metric in b.counts and metric in c.counts:
                bc, cc = b.counts[metric], c.counts[metric]
                move, why = judge_count(bc, cc)
                judgements.append(Judgement(label, metric, move == "worse", bc.rate, cc.rate,
                                            why, False, None, move == "better"))
                lines.append(f"{label}: {what}: {why}")
        lines += phase_lines
        moved += phase_moves
    for b, c in pairs:
        for side, x in (("baseline", b), ("current", c)):
            if x.inconclusive.count:
                lines.append(f"{side} {x.mode} {x.build}: {x.inconclusive.count} of {x.runs} "
                             "runs inconclusive (host too noisy to judge), not in the figures")
    matched = [id(x) for pair in pairs for x in pair]
    lines += [f"not compared: {side} {x.mode} {x.build} has no counterpart"
              for side, cs in (("baseline", base), ("current", cur))
              for x in cs if id(x) not in matched]
    medians = [j for j in judgements if j.metric not in COUNTED]  # counts rest on no interval
    if weak := sum(j.min_max_only for j in medians):
        lines.append(f"note: {weak} of {len(medians)} verdicts rest on intervals that are "
                     "just [min, max] of a few runs; more iterations would make them firmer")
    regressed = any(j.regressed for j in judgements)
    return Verdict(regressed, lines, judgements, found, unchecked, moved,
                   not regressed and any(j.improved for j in judgements))
