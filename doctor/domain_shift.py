"""Domain shift: how far the training images' early activations sit from the pretraining data.

A BatchNorm layer stores the per-channel mean and variance of its input over the pretraining
data (``running_mean``, ``running_var``). The preflight runs its batch of training images
(validation transform, no labels needed) through the backbone in eval mode, up to the first
``layers`` BatchNorm layers only, and compares each channel's mean and variance on these images
with the stored ones.

The score of a channel is the symmetric Kullback-Leibler divergence, in nats, between two
Gaussians: the channel's activations on these images and on the pretraining data, each
described by its mean and variance (both plus the layer's ``eps``, as the layer itself
divides by them)::

    (v / r + r / v - 2) / 2  +  (m - M)^2 (1 / v + 1 / r) / 2

with ``m, v`` the mean and variance on these images and ``M, r`` the stored ones. It is 0 when
the statistics agree; a mean off by one stored standard deviation adds about 1, a variance
off by a factor 2 adds 0.25. The score of a layer is the mean over its channels, the
reported score the mean over the layers. It grows fast when a channel goes nearly silent
(a colour channel of grayscale images, a texture channel on flat drawings), which is what
separates photos from far data best among the scores tried (``benchmarks/domain_shift.py``, on
EfficientNet-Lite0 with the first two layers: tiles of photos 0.13-0.40, stripes 4.6 and more,
line art and digits about 40; 11x between the groups, where a z-score of the means plus the
log variance ratio gave 1.6x). The images are compared with the whole pretraining data, so a
narrow set (dark scenes, many crops of one picture) scores higher than a varied one.

Layers whose statistics are still at their initial values (mean 0, variance 1: a backbone
built without pretrained weights) are left out; without any other there is nothing to compare.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from doctor.findings import Finding

#: Images per forward pass: bounds the memory of the measured activations.
CHUNK = 16


@dataclass(frozen=True)
class DomainShift:
    """The measured shift: the mean score and each layer's, by module name (input first)."""

    score: float
    layers: dict[str, float]


def pretrained_batchnorms(backbone: nn.Module, count: int) -> dict[str, _BatchNorm]:
    """The first ``count`` BatchNorm layers in module order, less those without pretraining
    statistics (none tracked, or still mean 0 and variance 1)."""
    first = [(name, module) for name, module in backbone.named_modules()
             if isinstance(module, _BatchNorm)][:count]
    return {name: bn for name, bn in first if _has_statistics(bn)}


def _has_statistics(bn: _BatchNorm) -> bool:
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        return False
    return not (bool((mean == 0).all()) and bool((var == 1).all()))


class _Moments:
    """Per-channel count, mean and sum of squared deviations of a layer input, over chunks
    (combined exactly, Chan et al.)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = torch.zeros(0, dtype=torch.float64)
        self.squares = torch.zeros(0, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        count = x.numel() // x.shape[1]
        mean, squares = mean.double().cpu(), var.double().cpu() * count
        if self.count == 0:
            self.count, self.mean, self.squares = count, mean, squares
            return
        total = self.count + count
        delta = mean - self.mean
        self.squares = self.squares + squares + delta**2 * self.count * count / total
        self.mean = self.mean + delta * count / total
        self.count = total

    @property
    def var(self) -> torch.Tensor:
        return self.squares / self.count


class _Enough(Exception):
    """Raised once every measured layer has seen its input: the rest of the network is skipped."""


def _divergence(moments: _Moments, bn: _BatchNorm) -> float:
    assert bn.running_mean is not None
    assert bn.running_var is not None
    stored_mean = bn.running_mean.detach().double().cpu()
    stored_var = bn.running_var.detach().double().cpu() + bn.eps
    var = moments.var + bn.eps
    per_channel = ((var / stored_var + stored_var / var - 2) / 2
                   + (moments.mean - stored_mean) ** 2 * (1 / var + 1 / stored_var) / 2)
    return float(per_channel.mean())


def measure_domain_shift(backbone: nn.Module, batch: torch.Tensor,
                         layers: int = 2) -> DomainShift | None:
    """Score ``batch`` against the pretraining statistics of the backbone's first BatchNorm layers.

    The backbone runs in eval mode under ``torch.no_grad`` (running statistics are not
    touched; each module's train/eval mode is restored) and stops after the last measured
    layer.

    Args:
        backbone: a feature extractor whose BatchNorm layers hold pretraining statistics.
        batch: normalized images (N x C x H x W), as the validation transform gives them.
        layers: how many BatchNorm layers, from the input, are compared.

    Returns:
        The shift, or None when none of those layers carries pretraining statistics.
    """
    measured = pretrained_batchnorms(backbone, layers)
    if not measured:
        return None
    moments = {name: _Moments() for name in measured}
    names: dict[nn.Module, str] = {bn: name for name, bn in measured.items()}
    seen: set[nn.Module] = set()

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        moments[names[module]].add(inputs[0])
        seen.add(module)
        if len(seen) == len(measured):
            raise _Enough

    modes = {module: module.training for module in backbone.modules()}
    hooks = [bn.register_forward_pre_hook(record) for bn in measured.values()]
    device = next(backbone.parameters()).device
    try:
        backbone.eval()
        with torch.no_grad():
            for chunk in batch.split(CHUNK):
                seen.clear()
                with contextlib.suppress(_Enough):
                    backbone(chunk.to(device))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    scores = {name: _divergence(moments[name], bn) for name, bn in measured.items()}
    return DomainShift(sum(scores.values()) / len(scores), scores)


def check_domain_shift(backbone: nn.Module, batch: torch.Tensor, backbone_name: str,
                       threshold: float, layers: int) -> list[Finding]:
    """A ``domain_shift`` warning when the images' early activations are far from the
    pretraining statistics (:func:`measure_domain_shift`), else an info with the score.

    Args:
        threshold: score above which the shift is warned; -1 turns the check off.
        layers: BatchNorm layers compared, from the input.
    """
    if threshold == -1:
        return []
    shift = measure_domain_shift(backbone, batch, layers)
    if shift is None:
        return [Finding("domain_shift", "info",
                        f"none of the first {layers} BatchNorm layers of {backbone_name} holds "
                        "pretraining statistics (no BatchNorm, or backbone.pretrained=false): "
                        "the domain shift is not measured", "none needed")]
    if not math.isfinite(shift.score):
        return []  # non-finite inputs: input_statistics reports them
    where = f"the first {len(shift.layers)} BatchNorm layers"
    if shift.score <= threshold:
        return [Finding("domain_shift", "info",
                        f"activations at {where} are {shift.score:.2f} from the pretraining "
                        f"statistics (threshold {threshold:g}): close to what {backbone_name} "
                        "was pretrained on", "none needed")]
    return [Finding(
        "domain_shift", "warning",
        f"activations at {where} are {shift.score:.2f} from the pretraining statistics "
        f"(threshold {threshold:g}): the images differ from what {backbone_name} was "
        "pretrained on",
        "let BatchNorm adapt (freeze.train_bn=true), unfreeze more stages (a larger "
        "freeze.depth, or freeze=none), and let the backbone move faster (a larger "
        "lr_schedule.backbone_lr_mult, e.g. 0.3-1)")]
