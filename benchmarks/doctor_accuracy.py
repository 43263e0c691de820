"""Measure the doctor: its labels against truth that does not come from its own code.

Two labelled sets, no training (seconds):

**Planted trials** (``benchmarks/curves/planted.jsonl``, ``benchmarks/planted_trials.py``):
real short fits, each case built to cause one label over 3 seeds. Truth is the planted
label; the doctor reads the full curves as a trial that ran its epochs,
``diagnose(curves, context=Context("ran"))``. The healthy cases are also read cut to their
first 2 epochs, as a pruner would have left them (``Context("pruned")``; the confusion matrix
is dropped, it is the last epoch's): truth ``too_early`` (with the default
``min_epochs`` of 3 these views check that rule and the order of the rules before it). A
case, such a view counted as one, is *named* when every one of its seeds gets its truth
label.

**Recorded tables** (``benchmarks/curves/digits.jsonl``, ``digits_imbalanced.jsonl``): 65
configs of the default search space, each trained 8 epochs. No cause is planted there; truth
is this rule on the trial's full-length outcome, which reads none of the doctor's code or
thresholds:

* *competitive*: among the best quarter of its table (the ceil(65 / 4) = 17 highest best
  ``val/f1_macro``, ties counted in) -- a trial a study would keep: it must get no failure
  label;
* *failure*: best ``val/balanced_acc`` within 0.05 of chance (1 / 10 classes) -- it learned
  nothing: it must get a failure label, never ``healthy``;
* *mid*: anything else (not scored).

The doctor reads each table trial at full length as a study would at the end: ending
``ran``, ``top_quarter`` from :func:`doctor.curves.in_top_quarter` over the table's best
F1s. It reads the same trials again cut at epochs 2-7, as a pruner would have left them
(``Context("pruned")``, not top quarter): how often an eventually competitive trial gets a
failure label at each cut (the slow starter a pruned study mislabels) is informative;
a chance-level trial called ``healthy`` at any cut must not happen.

Definitions, per label L over the planted set: *precision* = trials the doctor labels L whose
truth is L / trials the doctor labels L ("-" when it never says L); *recall* = trials whose
truth is L that the doctor labels L / trials whose truth is L; *n* = trials whose truth is L.
*False-alarm rate* = competitive trials given a failure label / competitive trials.

    python benchmarks/doctor_accuracy.py
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doctor.curves import in_top_quarter  # noqa: E402
from doctor.diagnosis import LABELS, Context, Curves, Diagnosis, diagnose  # noqa: E402

CURVES = ROOT / "benchmarks" / "curves"
TABLES = ("digits", "digits_imbalanced")
CLASSES = [str(c) for c in range(10)]  # the digits, as the datamodule names them
CHANCE, MARGIN = 1 / len(CLASSES), 0.05
CUT = 2  # epochs a truncated planted view keeps
CUTS = range(2, 8)  # epochs the recorded trials are read at, as pruned


@dataclass(frozen=True)
class Scored:
    """One trial (or a view of one) with its truth and the doctor's diagnosis."""

    case: str
    seed: int
    truth: str
    got: Diagnosis


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def planted() -> list[Scored]:
    """The planted trials at full length, and the healthy ones cut to ``CUT`` epochs."""
    scored = []
    for row in _lines(CURVES / "planted.jsonl"):
        curves = Curves(**{name: row[name] for name in Curves.SERIES},
                        confusion=row["confusion"], classes=row["classes"])
        scored.append(Scored(row["case"], row["seed"], row["truth"],
                             diagnose(curves, context=Context("ran"))))
        if row["truth"] == "healthy":
            cut = Curves(**{name: row[name][:CUT] for name in Curves.SERIES},
                         classes=row["classes"])
            scored.append(Scored(f"{row['case']}@{CUT}", row["seed"], "too_early",
                                 diagnose(cut, context=Context("pruned"))))
    return scored


def precision_recall(scored: list[Scored]) -> list[tuple[str, str, str, int]]:
    """(label, precision, recall, n) per label the truth or the doctor uses."""
    rows = []
    for label in LABELS:
        said = [s for s in scored if s.got.label == label]
        truth = [s for s in scored if s.truth == label]
        if not said and not truth:
            continue
        hits = sum(s.truth == label for s in said)
        precision = f"{hits / len(said):.2f}" if said else "-"
        recall = f"{hits / len(truth):.2f}" if truth else "-"
        rows.append((label, precision, recall, len(truth)))
    return rows


def named(scored: list[Scored]) -> tuple[int, int, list[str]]:
    """(cases named, cases, the cases missed with each miss's seed, label and reason)."""
    cases: dict[str, list[Scored]] = {}
    for s in scored:
        cases.setdefault(s.case, []).append(s)
    missed = [f"{s.case} seed {s.seed}: {s.got.label} (truth {s.truth}): {s.got.reason}"
              for runs in cases.values() for s in runs if s.got.label != s.truth]
    hit = sum(all(s.got.label == s.truth for s in runs) for runs in cases.values())
    return hit, len(cases), missed


@dataclass(frozen=True)
class Recorded:
    """A recorded table trial: its truth by the written rule, and its curves."""

    table: str
    index: int
    truth: str  # competitive, failure or mid
    best_f1: float
    curves: Curves

    def cut(self, epochs: int) -> Curves:
        c = self.curves
        return Curves(c.train_loss[:epochs], c.val_loss[:epochs], c.train_acc[:epochs],
                      c.val_acc[:epochs], classes=c.classes)


def _best(epochs: list[dict], key: str) -> float:
    values = [e[key] for e in epochs if key in e and math.isfinite(e[key])]
    return max(values) if values else -math.inf


def recorded(table: str) -> list[Recorded]:
    """The table's trials with their truth by the rule in the module docstring."""
    rows = _lines(CURVES / f"{table}.jsonl")
    f1 = {row["index"]: _best(row["epochs"], "val/f1_macro") for row in rows}
    top = math.ceil(len(rows) / 4)
    kth = sorted(f1.values(), reverse=True)[top - 1]
    trials = []
    for row in sorted(rows, key=lambda r: r["index"]):
        epochs = row["epochs"]
        if f1[row["index"]] >= kth:
            truth = "competitive"
        elif _best(epochs, "val/balanced_acc") <= CHANCE + MARGIN:
            truth = "failure"
        else:
            truth = "mid"
        series = {name: [e[key] for e in epochs] for name, key in
                  (("train_loss", "train/loss"), ("val_loss", "val/loss"),
                   ("train_acc", "train/acc"), ("val_acc", "val/acc"))}
        trials.append(Recorded(table, row["index"], truth, f1[row["index"]],
                               Curves(**series, classes=CLASSES)))
    return trials


def full_length(trials: list[Recorded]) -> dict[tuple[str, int], Diagnosis]:
    """Each trial read at full length, ranked against its own table's best F1s."""
    got = {}
    for trial in trials:
        others = [t.best_f1 for t in trials if t.table == trial.table and t is not trial]
        top = in_top_quarter(trial.best_f1, others, maximize=True)
        got[trial.table, trial.index] = diagnose(trial.curves, context=Context("ran", top))
    return got


def _listing(trials: Iterable[Recorded], got: dict[tuple[str, int], Diagnosis]) -> list[str]:
    return [f"    {t.table} {t.index}: {got[t.table, t.index].label}: "
            f"{got[t.table, t.index].reason}" for t in trials]


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line)


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report_planted(scored: list[Scored]) -> tuple[list[tuple[str, str, str, int]], str]:
    """Print the planted set's scores; return its table rows and its target line."""
    print(f"Planted trials: {len(scored)} (views included)")
    rows = precision_recall(scored)
    for label, precision, recall, n in rows:
        print(f"  {label:<20} precision {precision:>4}  recall {recall:>4}  n {n}")
    hit, cases, missed = named(scored)
    print(f"  planted causes named: {hit} of {cases}")
    for line in missed:
        print(f"    {line}")
    return rows, f"{_mark(hit == cases)} every planted cause named: {hit} of {cases}"


def report_recorded(trials: list[Recorded]) -> str:
    """Print the recorded tables' scores; return the false-alarm target line."""
    got = full_length(trials)
    print(f"\nRecorded tables ({', '.join(TABLES)}): {len(trials)} trials, "
          + ", ".join(f"{k} {v}" for k, v in sorted(Counter(t.truth for t in trials).items())))
    competitive = [t for t in trials if t.truth == "competitive"]
    alarms = [t for t in competitive if got[t.table, t.index].failure]
    print(f"  full length: false alarms on top-quarter trials {len(alarms)} of "
          f"{len(competitive)} ({len(alarms) / len(competitive):.0%}); labels "
          + _counts(got[t.table, t.index].label for t in competitive))
    _print_lines(_listing(alarms, got))
    failing = [t for t in trials if t.truth == "failure"]
    caught = [t for t in failing if got[t.table, t.index].failure]
    print(f"  full length: failing trials given a failure label {len(caught)} of "
          f"{len(failing)}; labels " + _counts(got[t.table, t.index].label for t in failing))
    _print_lines(_listing([t for t in failing if t not in caught], got))
    report_cuts(competitive, failing)
    return (f"{_mark(not alarms)} false alarms on top-quarter trials: {len(alarms)} of "
            f"{len(competitive)}")


def _counts(labels: Iterable[str]) -> str:
    return ", ".join(f"{label} {n}" for label, n in Counter(labels).most_common()) or "none"


def report_cuts(competitive: list[Recorded], failing: list[Recorded]) -> None:
    """The same trials read as pruned at each cut: the slow starters' failure labels
    (informative) and chance-level trials called healthy (must be 0)."""
    print("\n  as pruned after k epochs (Context('pruned'), not top quarter):")
    healthy_failing = []
    for k in CUTS:
        got = {(t.table, t.index): diagnose(t.cut(k), context=Context("pruned"))
               for t in [*competitive, *failing]}
        failed = [t for t in competitive if got[t.table, t.index].failure]
        healthy = [t for t in failing if got[t.table, t.index].label == "healthy"]
        healthy_failing += [(k, t) for t in healthy]
        print(f"    k={k}: eventually top-quarter given a failure label {len(failed)} of "
              f"{len(competitive)} ({_counts(got[t.table, t.index].label for t in failed)}); "
              f"chance-level called healthy {len(healthy)} of {len(failing)}")
        _print_lines(["  " + line for line in _listing(failed, got)])
    print(f"  {_mark(not healthy_failing)} chance-level trials never healthy at any cut"
          + "".join(f"\n    {t.table} {t.index} at k={k}" for k, t in healthy_failing))


def markdown(rows: list[tuple[str, str, str, int]], targets: list[str]) -> str:
    lines = ["| label | precision | recall | n |", "|---|---|---|---|"]
    lines += [f"| {label} | {p} | {r} | {n} |" for label, p, r, n in rows]
    return "\n".join([*lines, "", *(f"- {line}" for line in targets)])


def main() -> None:
    rows, named_line = report_planted(planted())
    alarm_line = report_recorded([t for table in TABLES for t in recorded(table)])
    print("\nFor the README (planted set; false alarms on the recorded tables):\n")
    print(markdown(rows, [alarm_line, named_line]))


if __name__ == "__main__":
    main()
