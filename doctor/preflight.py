"""Preflight: check a built trial for the known causes of a stalled fine-tune, before training.

Runs on the objects the trial will train with (model, freezing callback, datamodule after
``setup``), in this order:

=====================  ====================================================================
``normalization``      each split's Normalize against the backbone's pretraining statistics
``input_size``         the validation tensor size against the pretrained input size (info)
``input_statistics``   channel mean/std of normalized images: double or missing scaling
``val_determinism``    the validation transform gives one tensor per image (error)
``labels``             targets in range, at least two classes (error), one dominant class
``class_balance``      classes without validation images, rare classes, hidden imbalance
``leakage``            pixel-identical images across the split
``near_duplicates``    perceptual-hash near copies across the split
``trainable`` ``head`` something trains, the head is sized to the classes (errors)
``batchnorm``          BatchNorm in frozen stages left in training mode
``domain_shift``       early activations against the pretraining BatchNorm statistics
``loss`` ``activation``  cross-entropy on raw logits
=====================  ====================================================================

Errors stop the run before its MLflow run exists; warnings are printed and tagged on it.
``python -m doctor preflight <overrides>`` runs the same checks alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm.data
import torch

from data_modules.datamodules import ClassificationDataModule, ImageDataset
from data_modules.images import decode, image_identity
from doctor.balance import ClassCounts, check_balance, check_labels
from doctor.domain_shift import check_domain_shift
from doctor.findings import Finding
from doctor.input_checks import (
    check_determinism,
    check_input_size,
    check_normalization,
    check_statistics,
)
from doctor.leakage import FingerprintCache, Fingerprints, check_leakage
from doctor.model_checks import check_model
from doctor.settings import PreflightSettings
from errors import PlateauError, console

#: Finding lines printed in this process (:meth:`PreflightReport.show`'s ``once``).
_SHOWN: set[str] = set()


@dataclass
class PreflightReport:
    """The findings of one preflight, with the class counts it measured."""

    findings: list[Finding]
    counts: ClassCounts
    seconds: float

    def of(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    def tags(self) -> dict[str, str]:
        """MLflow tags: ``plateau.preflight`` is ``clean`` or the checks that warned."""
        warned = sorted({f.check for f in self.findings if f.severity != "info"})
        return {"plateau.preflight": ",".join(warned) or "clean"}

    def show(self, verbose: bool = False, once: bool = False) -> None:
        """Print errors and warnings (and info, and the class counts, when ``verbose``).

        With ``once``, a finding already printed in this process is not printed again: the
        trials of a sweep share their data and mostly their backbone, and a warning the
        base config's preflight printed need not follow every trial (each trial's MLflow
        run is still tagged with it).
        """
        if verbose:
            console.print(_counts_table(self.counts))
        style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
        for finding in self.findings:
            if once and finding.line() in _SHOWN:
                continue
            if verbose or finding.severity != "info":
                _SHOWN.add(finding.line())
                console.print(f"[{style[finding.severity]}]preflight {finding.severity}[/]: "
                              f"{finding.check}: {finding.cause}\n  fix: {finding.fix}",
                              highlight=False, soft_wrap=True)
        if verbose:
            console.print(f"preflight: {len(self.of('error'))} errors, "
                          f"{len(self.of('warning'))} warnings ({self.seconds:.2f} s)")

    def raise_for_errors(self) -> None:
        errors = self.of("error")
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more preflight errors)" if len(errors) > 1 else ""
            raise PlateauError(f"preflight: {first.check}: {first.cause}{more}; "
                               f"fix: {first.fix}")


def _counts_table(counts: ClassCounts) -> str:
    width = max(len(n) for n in counts.names)
    lines = [f"{'class':<{width}}  train    val"]
    lines += [f"{name:<{width}}  {t:>5}  {v:>5}"
              for name, t, v in zip(counts.names, counts.train, counts.val, strict=False)]
    lines.append(f"imbalance ratio {counts.imbalance_ratio:.1f}:1")
    return "\n".join(lines)


def _names(dataset: ImageDataset, split: str) -> list[str]:
    return [str(item) if isinstance(item, Path) else f"{split} #{i}"
            for i, item in enumerate(dataset.items)]


def _sample(dataset: ImageDataset, count: int) -> list[int]:
    return sorted(set(np.linspace(0, len(dataset) - 1, min(count, len(dataset)))
                      .round().astype(int).tolist()))


def _leakage(train: ImageDataset, val: ImageDataset, settings: PreflightSettings,
             cache: FingerprintCache) -> list[Finding]:
    items = [*train.items, *val.items]
    files = [str(item.resolve().parent) for item in items if isinstance(item, Path)]
    location = os.path.commonpath(files) if len(files) == len(items) and files else None
    # The files as stored, not as a decoded-image cache serves them (pre-resized).
    prints = cache.fingerprints([image_identity(item) for item in items],
                                lambda k: decode(items[k]), location)
    split = len(train)
    train_prints = Fingerprints(prints.exact[:split], prints.perceptual[:split])
    val_prints = Fingerprints(prints.exact[split:], prints.perceptual[split:])
    return check_leakage(train_prints, val_prints, _names(train, "train"), _names(val, "val"),
                         settings.near_duplicate_distance)


def run_preflight(model: torch.nn.Module, freezing: object,
                  datamodule: ClassificationDataModule, *, backbone_name: str, weighted: bool,
                  objective: str, settings: PreflightSettings,
                  cache_dir: Path | None) -> PreflightReport:
    """Every check of the module docstring on a built trial.

    Args:
        model: the module to train (``backbone`` and ``head`` attributes).
        freezing: the trial's freezing callback.
        datamodule: set up (``setup("fit")`` called).
        backbone_name: for messages.
        weighted: the trial counters imbalance (class weights or a balanced sampler).
        objective: the objective metric.
        settings: thresholds (``doctor.preflight``).
        cache_dir: where fingerprints are cached; None computes them every time.
    """
    started = time.perf_counter()
    train, val = datamodule.train_set, datamodule.val_set
    if not isinstance(train, ImageDataset) or not isinstance(val, ImageDataset):
        raise ValueError("run_preflight needs a datamodule of images: call setup('fit') first")
    counts = ClassCounts.from_targets(datamodule.classes, train.targets.numpy(),
                                      val.targets.numpy())
    findings = check_labels(counts, settings.majority_share)
    if any(f.severity == "error" for f in findings):
        return PreflightReport(findings, counts, time.perf_counter() - started)
    backbone = getattr(model, "backbone", model)
    pretrained = timm.data.resolve_model_data_config(backbone)
    images = [train.image(i) for i in _sample(train, settings.sample_images)]
    batch = torch.stack([datamodule.val_transform(image) for image in images])
    findings += check_normalization(
        pretrained, {"validation": datamodule.val_transform,
                     "training": datamodule.train_transform}, backbone_name)
    findings += check_input_size(pretrained, batch[0], backbone_name)
    findings += check_statistics(batch, settings.max_abs_mean, settings.min_std,
                                 settings.max_std)
    findings += check_determinism(datamodule.val_transform, images[:8])
    findings += check_domain_shift(backbone, batch, backbone_name, settings.domain_shift,
                                   settings.domain_shift_layers)
    findings += check_balance(counts, weighted=weighted, objective=objective,
                              ratio_limit=settings.imbalance_ratio,
                              min_images=settings.min_images_per_class)
    cache = FingerprintCache(None if cache_dir is None else cache_dir / "fingerprints")
    findings += _leakage(train, val, settings, cache)
    findings += check_model(model, freezing, datamodule.num_classes, batch[:4])  # type: ignore
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.severity])
    return PreflightReport(findings, counts, time.perf_counter() - started)
