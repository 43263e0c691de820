"""The model as the first training step will see it: what trains, head size, BatchNorm, output.

The freezing callback is applied to deep copies of the model and the callback, so the checks
see exactly what the fit will start from and change nothing of either.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from doctor.findings import Finding
from errors import PlateauError
from lightning_modules.stages import backbone_stages

_SINGLE_LABEL_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_FIXES = "freeze=depth freeze.depth=2, or freeze=none"


def _last_linear(module: nn.Module) -> nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _frozen_stage_batchnorms(backbone: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers of stages whose other parameters are all frozen."""
    found: list[_BatchNorm] = []
    try:
        stages = backbone_stages(backbone)
    except PlateauError:  # no stage structure: nothing is frozen by stage
        return found
    for stage in stages:
        bn_params = {id(p) for bn in stage.batchnorms for p in bn.parameters(recurse=False)}
        others = [p for p in stage.parameters if id(p) not in bn_params]
        if others and not any(p.requires_grad for p in others):
            found.extend(stage.batchnorms)
    return found


def check_model(model: pl.LightningModule, freezing: pl.Callback, num_classes: int,
                batch: torch.Tensor) -> list[Finding]:
    """Trainable parameters, head width, frozen BatchNorm mode, and raw-logit outputs.

    Args:
        model: the built module, with ``backbone`` and ``head`` attributes.
        freezing: the trial's freezing callback (a ``BaseFinetuning``), or any callback.
        num_classes: classes in the data.
        batch: a few validation-transformed images.
    """
    probe, freezing = copy.deepcopy(model), copy.deepcopy(freezing)
    if isinstance(freezing, BaseFinetuning):
        freezing.freeze_before_training(probe)
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    if trainable == 0:
        return [Finding("trainable", "error",
                        "no parameter trains: the backbone and the head are all frozen",
                        f"let the head train and unfreeze some of the backbone ({_FIXES})")]
    findings = []
    head = _last_linear(getattr(probe, "head", probe))
    if head is not None and head.out_features != num_classes:
        findings.append(Finding(
            "head", "error",
            f"the head outputs {head.out_features} classes but the data has {num_classes}",
            "size the head from the data's classes (ImageClassifier(num_classes=...))"))
    if head is not None and not any(p.requires_grad for p in head.parameters()):
        findings.append(Finding("trainable", "error", "the classification head is frozen",
                                "never freeze the head; freeze backbone stages only"))
    findings += _check_batchnorm(probe, freezing)
    findings += _check_output(probe, num_classes, batch)
    return findings


def _check_batchnorm(probe: pl.LightningModule, freezing: pl.Callback) -> list[Finding]:
    backbone = getattr(probe, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return []
    probe.train()
    # The callback's own BatchNorm policy, as applied at each training step.
    freezing.on_train_batch_start(None, probe, None, 0)  # type: ignore[arg-type]
    drifting = [bn for bn in _frozen_stage_batchnorms(backbone) if bn.training]
    if not drifting:
        return []
    return [Finding(
        "batchnorm", "warning",
        f"{len(drifting)} BatchNorm layers in frozen stages stay in training mode: their "
        "running statistics drift to the new data while the weights around them are frozen",
        "freeze.train_bn=false keeps frozen BatchNorm in eval mode")]


def _check_output(probe: pl.LightningModule, num_classes: int,
                  batch: torch.Tensor) -> list[Finding]:
    criterion = getattr(probe, "criterion", None)
    findings = []
    if criterion is not None and not isinstance(criterion, _SINGLE_LABEL_LOSSES):
        findings.append(Finding(
            "loss", "warning",
            f"the loss is {type(criterion).__name__}, not cross-entropy: single-label "
            "classes need softmax cross-entropy on logits", "use nn.CrossEntropyLoss"))
    probe.eval()
    with torch.no_grad():
        output = probe(batch)
    if output.ndim != 2 or output.shape[1] != num_classes:
        return [*findings, Finding(
            "head", "error",
            f"the model outputs shape {tuple(output.shape)}, not (batch, {num_classes})",
            "end the model with one linear layer of num_classes outputs")]
    if not torch.isfinite(output).all():
        return [*findings, Finding(
            "activation", "error", "the model outputs NaN/inf on validation images",
            "check backbone.weights_file and the input normalization")]
    sums = output.sum(dim=1)
    if (output >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        findings.append(Finding(
            "activation", "warning",
            "the model outputs probabilities (rows sum to 1): cross-entropy applies softmax "
            "itself, so a softmax in the model flattens the gradients",
            "remove the final softmax; the head must output raw logits"))
    return findings
