"""The job side of a sweep: one Hydra job runs one trial (:mod:`sweeps.job.run`).

Building a trial from its config (:mod:`~sweeps.job.build`, :mod:`~sweeps.job.prepare`),
reporting into its live Optuna trial (:mod:`~sweeps.job.study_trial`,
:mod:`~sweeps.job.reporter`), the extra ranks of a DDP trial (:mod:`~sweeps.job.ddp`), its
MLflow run (:mod:`~sweeps.job.logger`) and a full disk (:mod:`~sweeps.job.disk`). This is
the only part of ``sweeps`` that imports Lightning, timm and torch.
"""
