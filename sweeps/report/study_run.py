"""MLflow's view of a study: one parent run, the trials' runs nested under it."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from errors import one_line
from sweeps import ledger, tracking
from sweeps.objectives import FirstObjective
from sweeps.report import pareto
from sweeps.report.model import base_trial, signed_gain
from sweeps.storage import mask_password

log = logging.getLogger(__name__)

#: How long a worker that loaded a new study waits for its creator's parent run.
PARENT_WAIT_S = 60.0
#: How long it waits for a sign that the study's creator makes one (it marks the study
#: within milliseconds of creating it).
MARK_WAIT_S = 1.0


def _wait_for_parent(study: optuna.Study) -> str | None:
    """The parent run id another worker is about to set, or None when none is coming."""
    started = time.monotonic()
    while True:
        attrs = study.user_attrs
        if attrs.get(tracking.STUDY_RUN_ATTR):
            return str(attrs[tracking.STUDY_RUN_ATTR])
        waited = time.monotonic() - started
        pending = attrs.get(tracking.STUDY_RUN_PENDING_ATTR, False)
        if waited >= (PARENT_WAIT_S if pending else MARK_WAIT_S):
            return None
        time.sleep(0.2)


def class_name(obj: Any) -> str:
    func = getattr(obj, "func", None)  # a partial (grid sampler)
    return type(obj).__name__ if func is None else func.__name__


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Log the study run's params; a name or value MLflow refuses costs a warning, never the
    sweep (the params describe the study, the study itself is in its storage)."""
    from mlflow.entities import Param

    try:
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    except Exception as err:
        log.warning("study run params not logged: %s", one_line(err, 200))


@dataclass
class StudyRun:
    """The study's parent run (absent with ``logger=none``)."""

    client: Any
    run_id: str | None
    experiment_id: str | None = None

    @classmethod
    def open(cls, cfg: DictConfig, study: optuna.Study, url: str, sampler: Any,
             pruner: Any, created: bool = True,
             params: dict[str, str] | None = None) -> StudyRun:
        """Create the parent run, or reopen the one a previous sweep of this study made.

        Workers that start together on one study make one parent run: the worker that
        created the study marks it as making one (:data:`tracking.STUDY_RUN_PENDING_ATTR`)
        and creates it; the others wait for its id (up to :data:`PARENT_WAIT_S`) instead of
        making their own. A study made otherwise (``optuna.create_study`` to enqueue trials,
        or a sweep with ``logger=none``) has no such mark: its first sweep with MLflow makes
        the parent run after :data:`MARK_WAIT_S`.

        ``params`` (the search space, sampler, pruner, budget) are logged when the run is
        made: MLflow params cannot change, so a resumed sweep keeps the first sweep's.
        """
        if tracking.mlflow_config(cfg) is None:
            return cls(None, None)
        if created:  # before MLflow's slow start: the others see the run is coming
            study.set_user_attr(tracking.STUDY_RUN_PENDING_ATTR, True)
        found = tracking.tracking_client(cfg)
        assert found is not None  # an MLflow logger
        client, experiment_id = found
        run_id = study.user_attrs.get(tracking.STUDY_RUN_ATTR) or (
            None if created else _wait_for_parent(study))
        if run_id:
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=f"study-{study.study_name}", tags={
                "plateau.study": study.study_name,
                "plateau.storage": mask_password(url),
                "plateau.sampler": class_name(sampler),
                "plateau.pruner": class_name(pruner),
                "plateau.direction": ", ".join(d.name.lower() for d in study.directions),
            })
            run_id = run.info.run_id
            if params:
                _log_params(client, run_id, params)
            study.set_user_attr(tracking.STUDY_RUN_ATTR, run_id)
        return cls(client, run_id, experiment_id)

    def end_child(self, trial: FrozenTrial) -> None:
        """Terminate the run of a trial whose job died, or was cut off, before ending it, so
        it is not left RUNNING: KILLED when the trial runs again (``interrupted``), else
        FAILED with the trial's error.

        A job killed between creating its run and writing the run's id on the trial left
        only the run's tags: its RUNNING run is found by the trial's number (the
        experiment holds one study)."""
        if self.client is None:
            return
        run_ids = [trial.user_attrs.get(ledger.ATTR_RUN_ID)]
        if not run_ids[0] and self.experiment_id is not None:
            run_ids = [run.info.run_id for run in self.client.search_runs(
                [self.experiment_id], "attributes.status = 'RUNNING' and "
                f"tags.`plateau.trial_number` = '{trial.number}'")]
        interrupted = bool(trial.user_attrs.get(ledger.ATTR_INTERRUPTED))
        tags = {"plateau.state": "FAIL", "plateau.error": trial.user_attrs.get(ledger.ATTR_ERROR)}
        if interrupted:
            tags["plateau.interrupted"] = "true"
        for run_id in filter(None, run_ids):
            for key, value in tags.items():
                if value:
                    self.client.set_tag(run_id, key, str(value))
            self.client.set_terminated(run_id, status="KILLED" if interrupted else "FAILED")

    def close(self, study: optuna.Study, status: str) -> None:
        """Log counts by state and the best trial, and end the parent run with ``status``."""
        if self.client is None or self.run_id is None:
            return
        trials = study.get_trials(deepcopy=False)
        counts = Counter(t.state.name for t in trials)
        for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
            self.client.log_metric(self.run_id, f"trials_{state.lower()}", counts.get(state, 0))
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if completed:
            best = study.best_trial
            self.client.log_metric(self.run_id, "best_value", float(best.values[0]))
            self.client.set_tag(self.run_id, "plateau.best_trial", str(best.number))
            self.client.set_tag(self.run_id, "plateau.best_params",
                                json.dumps(best.params, default=str)[:5000])
            base = base_trial(completed)
            if base is not None and base.value is not None:
                self.client.log_metric(self.run_id, "base_value", float(base.value))
                self.client.log_metric(self.run_id, "gain_over_base", signed_gain(
                    float(best.values[0]), base.value, study.direction == StudyDirection.MAXIMIZE))
        self.client.set_tag(self.run_id, "mlflow.note.content", self.description(study))
        self.client.set_terminated(self.run_id, status=status)

    def _link(self, trial: FrozenTrial) -> str:
        """``trial 5`` as a link to its run in the MLflow UI, when it has one."""
        run_id = trial.user_attrs.get(ledger.ATTR_RUN_ID)
        if not run_id or self.experiment_id is None:
            return f"trial {trial.number}"
        return f"[trial {trial.number}](#/experiments/{self.experiment_id}/runs/{run_id})"

    def description(self, study: optuna.Study) -> str:
        """The run's description (Markdown, shown on its page): best value and trial with a
        link to its run, the gain over the base trial, the counts by state."""
        trials = study.get_trials(deepcopy=False)
        counts = Counter(t.state.name for t in trials if ledger.is_finished(t))
        lines = [f"**Study {study.study_name}**: "
                 + ", ".join(f"{counts.get(s, 0)} {s.lower()}"
                             for s in ("COMPLETE", "PRUNED", "FAIL")) + "."]
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if not completed:
            return "\n\n".join([*lines, "No trial completed."])
        best = study.best_trial
        lines.append(f"Best: **{float(best.values[0]):.4f}**, {self._link(best)}.")
        base = base_trial(completed)
        if base is not None and base.value is not None:
            gain = signed_gain(float(best.values[0]), base.value,
                               study.direction == StudyDirection.MAXIMIZE)
            lines.append(f"Gain over the base config ({self._link(base)}, {base.value:.4f}): "
                         f"**{gain:+.4f}**.")
        if isinstance(study, FirstObjective):  # a multi-objective study, read by its first
            front = pareto.front_of(study.study, [])
            if front is not None:
                lines.append("Best above is by the first objective. Pareto front: "
                             + ", ".join(self._link(t) for t in front.front)
                             + f"; knee: {self._link(front.knee)} (`best_trial.yaml`).")
        lines.append("Pruned trials have the run status KILLED; their value is their best "
                     "objective before they were stopped. The study report is in this run's "
                     "artifacts (report/).")
        return "\n\n".join(lines)
