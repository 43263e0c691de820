"""Orchestration: the trial runner, MLflow bookkeeping, and the study around them.

Submodules are imported where used: ``sweeps.errors`` is needed by the model and data
packages and must not pull in Lightning.
"""
