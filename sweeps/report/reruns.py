"""The top-k reruns' verdict: each config's single-seed value beside its mean ± sd over
seeds, and whether the seeds changed the order (see :mod:`sweeps.sweeper.reruns`).

Read from the study alone: the plan the sweep stored (:data:`sweeps.ledger.STUDY_RERUN_PLAN`)
names the configs, the trials with role ``rerun`` hold their values. A config's values are
its search trial's and its COMPLETE reruns'; the final pick is the best mean.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweeps import ledger

#: The report's file holding the table as CSV.
CSV = "reruns.csv"
#: The report's words before its rerun table, and the table's columns.
INTRO = ("The best configs of the search, run again with new seeds after it: the value of one "
         "seed (the search trial's) beside the mean ± sample sd over all its seeds (n values); "
         "the best mean is the pick (`best_trial.yaml`). The objective is")
HEADER = ["config (trial)", "single seed", "mean ± sd (n)", "rerun seeds", "rank by single",
          "rank by mean", "order"]


@dataclass(frozen=True)
class ConfigSeeds:
    """One rerun config: its search trial, its values over seeds, and its two ranks."""

    trial: FrozenTrial
    #: the search trial's value first, then its COMPLETE reruns' in seed order
    values: list[float]
    seeds: list[int]
    rank_single: int
    rank_mean: int
    #: reruns planned for this config, finished or not
    planned: int

    @property
    def single(self) -> float:
        return self.values[0]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        """The sample standard deviation; None with one value."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def n(self) -> int:
        return len(self.values)

    def shown(self) -> str:
        """``0.9876 ± 0.0040 (n=3)``"""
        spread = "" if self.sd is None else f" ± {self.sd:.4f}"
        return f"{self.mean:.4f}{spread} (n={self.n})"


@dataclass(frozen=True)
class RerunTable:
    """The reruns' configs, best single-seed value first."""

    rows: list[ConfigSeeds]

    @property
    def pick(self) -> ConfigSeeds:
        """The final pick: the best mean over seeds."""
        return next(row for row in self.rows if row.rank_mean == 1)

    @property
    def changed(self) -> bool:
        """Whether the mean over seeds ranks the configs otherwise than one seed did."""
        return any(row.rank_single != row.rank_mean for row in self.rows)

    @property
    def finished(self) -> int:
        return sum(row.n - 1 for row in self.rows)

    @property
    def planned(self) -> int:
        return sum(row.planned for row in self.rows)

    def cells(self) -> list[list[str]]:
        """The report's rows under :data:`HEADER`."""
        return [[str(r.trial.number), f"{r.single:.4f}", r.shown(), ", ".join(map(str, r.seeds)),
                 str(r.rank_single), str(r.rank_mean),
                 "same" if r.rank_single == r.rank_mean else "changed"] for r in self.rows]

    def markdown(self, objective: str) -> list[str]:
        """The study report's *Reruns* section (``report.md``)."""
        rows = [HEADER, ["---"] * len(HEADER), *self.cells()]
        return ["## Reruns", "", f"{INTRO} `{objective}`. {self.verdict()}", "",
                *("| " + " | ".join(row) + " |" for row in rows), "",
                f"The table as CSV: [{CSV}]({CSV}).", ""]

    def csv(self) -> str:
        """The table as CSV, one row per config, full precision (``report/reruns.csv``)."""
        lines = ["trial,single,mean,sd,n,seeds,rank_single,rank_mean"]
        lines += [f"{r.trial.number},{r.single!r},{r.mean!r},{'' if r.sd is None else repr(r.sd)},"
                  f"{r.n},{' '.join(map(str, r.seeds))},{r.rank_single},{r.rank_mean}"
                  for r in self.rows]
        return "\n".join(lines) + "\n"

    def verdict(self) -> str:
        """The outcome in words: whether the order changed, and the pick."""
        pick, first = self.pick, self.rows[0]
        if pick.trial.number != first.trial.number:
            text = (f"The order changed: by the mean over seeds trial {pick.trial.number}'s "
                    f"config is best ({pick.shown()}), though trial {first.trial.number}'s had "
                    f"the best single seed ({first.single:.4f}; its mean {first.shown()}).")
        elif self.changed:
            text = (f"The best config held its place (trial {pick.trial.number}, "
                    f"{pick.shown()}); the order below it changed.")
        else:
            text = (f"The order held: the mean over seeds ranks the configs as one seed did; "
                    f"trial {pick.trial.number}'s config is best ({pick.shown()}).")
        if self.finished < self.planned:
            text += f" Only {self.finished} of {self.planned} reruns finished."
        return text


def rerun_table(trials: Sequence[FrozenTrial], plan: dict[str, object],
                maximize: bool) -> RerunTable | None:
    """The table of the ``plan``'s configs from the study's ``trials``; None when no rerun
    has finished COMPLETE."""
    numbered = {t.number: t for t in trials}
    configs = [numbered[int(n)] for n in plan.get("configs", []) or []  # type: ignore[attr-defined]
               if int(n) in numbered and numbered[int(n)].value is not None]
    planned = [int(of) for of, _ in plan.get("reruns", []) or []]  # type: ignore[attr-defined]
    reruns = sorted((t for t in trials if ledger.is_rerun(t) and t.state == TrialState.COMPLETE
                     and t.value is not None), key=lambda t: int(t.user_attrs.get(
                         ledger.ATTR_RERUN_SEED, 0)))
    if not configs or not reruns:
        return None
    sign = -1.0 if maximize else 1.0
    single_order = sorted(configs, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
    grouped = {t.number: [t, *(r for r in reruns
                               if int(r.user_attrs.get(ledger.ATTR_RERUN_OF, -1)) == t.number)]
               for t in configs}
    means = {n: statistics.fmean(float(t.value) for t in group)  # type: ignore[arg-type]
             for n, group in grouped.items()}
    single_rank = {t.number: i + 1 for i, t in enumerate(single_order)}
    mean_order = sorted(configs, key=lambda t: (sign * means[t.number], single_rank[t.number]))
    mean_rank = {t.number: i + 1 for i, t in enumerate(mean_order)}
    rows = [ConfigSeeds(t, [float(r.value) for r in grouped[t.number]],  # type: ignore[arg-type]
                        [int(r.user_attrs[ledger.ATTR_RERUN_SEED]) for r in grouped[t.number][1:]],
                        single_rank[t.number], mean_rank[t.number], planned.count(t.number))
            for t in single_order]
    return RerunTable(rows)


def of_study(study: optuna.Study,
             trials: Sequence[FrozenTrial] | None = None) -> RerunTable | None:
    """The rerun table of ``study`` (its ``trials`` when given), None without reruns."""
    plan = study.user_attrs.get(ledger.STUDY_RERUN_PLAN)
    if not isinstance(plan, dict):
        return None
    found = study.get_trials(deepcopy=False) if trials is None else trials
    return rerun_table(found, plan, study.direction == StudyDirection.MAXIMIZE)


def best_cell(best: FrozenTrial, table: RerunTable | None) -> str:
    """The report overview's best: the trial's value, and after reruns the pick's mean."""
    text = f"{best.value:.4f} (trial {best.number})"
    if table is None:
        return text
    return (f"{text}; best mean over seeds (reruns): {table.pick.shown()}, trial "
            f"{table.pick.trial.number}'s config")


def section(table: RerunTable | None, objective: str) -> list[str]:
    """The report's *Reruns* section; nothing without reruns."""
    return [] if table is None else table.markdown(objective)


def write_csv(table: RerunTable | None, folder: Path) -> None:
    """``<folder>/reruns.csv`` with the table; a stale one removed when there is none."""
    (folder / CSV).unlink(missing_ok=True)
    if table is not None:
        (folder / CSV).write_text(table.csv())
