"""Freezing strategies in real Lightning fits: timm's tiny ResNet on generated stripes.

Each fit is one to three epochs of a few dozen 32 px images on CPU. Weights and BatchNorm
running statistics are snapshotted before the fit and compared bitwise afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning.pytorch as pl
import pytest
import timm
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from data_modules.synthetic import SyntheticDataModule
from errors import PlateauError
from lightning_modules.backbones import create_backbone
from lightning_modules.classifier import ImageClassifier
from lightning_modules.freezing import (
    FreezeDepth,
    GradualUnfreeze,
    HeadOnly,
    LinearProbeThenFineTune,
    TrainAll,
)
from lightning_modules.schedules import constant, warmup_cosine
from lightning_modules.stages import backbone_stages

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)

#: test_resnet's stages by parameter-name prefix, input side first (independent of timm's
#: group_matcher, which ``backbone_stages`` uses).
RESNET_STAGE_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",),
)


# --- helpers ------------------------------------------------------------------------------

def make_classifier(backbone: nn.Module | None = None, **kwargs: object) -> ImageClassifier:
    torch.manual_seed(0)
    if backbone is None:
        backbone = create_backbone("test_resnet", pretrained=False)
    return ImageClassifier(backbone, num_classes=3, optimizer=SGD, **kwargs)


def fit(model: ImageClassifier, callbacks: Sequence[Callback], epochs: int = 1) -> None:
    data = SyntheticDataModule(
        num_classes=3, images_per_class=16, size=32, image_size=32, batch_size=8,
        pretrained_config=timm.data.resolve_model_data_config(model.backbone),
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=list(callbacks),
    )
    trainer.fit(model, datamodule=data)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    """running_mean / running_var / num_batches_tracked of every BatchNorm layer, by name."""
    return {
        f"{layer}.{name}": buf.detach().clone()
        for layer, bn in module.named_modules() if isinstance(bn, _BatchNorm)
        for name, buf in bn.named_buffers(recurse=False)
    }


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in after.items() if not torch.equal(value, before[name])}


def trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def names_under(module: nn.Module, prefixes: Sequence[str]) -> set[str]:
    return {name for name, _ in module.named_parameters() if name.startswith(tuple(prefixes))}


def stats_under(stats: dict[str, torch.Tensor], prefixes: Sequence[str]) -> set[str]:
    return {name for name in stats if name.startswith(tuple(prefixes))}


@dataclass
class Snapshot:
    """A model and what it held before its fit."""

    model: ImageClassifier
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]


def snapshot_then_fit(model: ImageClassifier, callbacks: Sequence[Callback],
                      epochs: int = 1) -> Snapshot:
    before = Snapshot(model, weights(model.backbone), weights(model.head), bn_stats(model.backbone))
    fit(model, callbacks, epochs)
    return before


@dataclass
class EpochRecorder(Callback):
    """At each training epoch's end: which stages train, and each param group's lr."""

    trainable: list[list[bool]] = field(default_factory=list)
    lrs: list[list[float]] = field(default_factory=list)
    step_lrs: list[list[float]] = field(default_factory=list)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: object, batch: object, batch_idx: int) -> None:
        self.step_lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stages = backbone_stages(pl_module.backbone)
        self.trainable.append([all(p.requires_grad for p in s.parameters) for s in stages])
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


# --- head only ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def head_only_run() -> Snapshot:
    return snapshot_then_fit(make_classifier(), [HeadOnly()])


def test_head_only_trains_every_head_parameter(head_only_run: Snapshot) -> None:
    head = head_only_run.model.head
    assert changed(head_only_run.head, weights(head)) == set(head_only_run.head)
    assert trainable_names(head) == set(head_only_run.head)


def test_head_only_leaves_backbone_weights_bitwise_unchanged_and_frozen(
        head_only_run: Snapshot) -> None:
    backbone = head_only_run.model.backbone
    assert changed(head_only_run.backbone, weights(backbone)) == set()
    assert trainable_names(backbone) == set()


def test_head_only_keeps_backbone_batchnorm_running_stats(head_only_run: Snapshot) -> None:
    assert head_only_run.stats, "test_resnet has BatchNorm layers"
    assert changed(head_only_run.stats, bn_stats(head_only_run.model.backbone)) == set()


def test_head_only_parameter_counts_report_only_the_head_as_trainable(
        head_only_run: Snapshot) -> None:
    model = head_only_run.model
    head = sum(p.numel() for p in model.head.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert head == model.backbone.num_features * 3 + 3
    assert model.parameter_counts() == (head, total)


def test_head_only_with_train_bn_updates_running_stats_and_trains_only_batchnorm() -> None:
    run = snapshot_then_fit(make_classifier(), [HeadOnly(train_bn=True)])
    backbone = run.model.backbone
    bn_params = {f"{layer}.{name}" for layer, bn in backbone.named_modules()
                 if isinstance(bn, _BatchNorm) for name, _ in bn.named_parameters(recurse=False)}
    assert changed(run.stats, bn_stats(backbone)) == set(run.stats)
    assert changed(run.backbone, weights(backbone)) == bn_params
    assert trainable_names(backbone) == bn_params


# --- freeze depth -------------------------------------------------------------------------

@pytest.mark.parametrize("depth", range(len(RESNET_STAGE_PREFIXES) + 1))
def test_freeze_depth_makes_exactly_the_top_stages_trainable(depth: int) -> None:
    model = make_classifier()
    FreezeDepth(depth).freeze_before_training(model)
    top = RESNET_STAGE_PREFIXES[len(RESNET_STAGE_PREFIXES) - depth:]
    expected = names_under(model.backbone, [p for stage in top for p in stage])
    assert trainable_names(model.backbone) == expected
    stages = backbone_stages(model.backbone)
    top_ids = {id(p) for s in stages[len(stages) - depth:] for p in s.parameters}
    assert {id(p) for p in model.backbone.parameters() if p.requires_grad} == top_ids
    assert all(p.requires_grad for p in model.head.parameters())


def test_freeze_depth_two_fit_updates_layer3_and_layer4_only() -> None:
    run = snapshot_then_fit(make_classifier(), [FreezeDepth(2)])
    backbone = run.model.backbone
    top, bottom = ("layer3.", "layer4."), ("conv1.", "bn1.", "layer1.", "layer2.")
    assert changed(run.backbone, weights(backbone)) == names_under(backbone, top)
    stats_moved = changed(run.stats, bn_stats(backbone))
    assert stats_moved == stats_under(run.stats, top)
    assert not stats_moved & stats_under(run.stats, bottom)


def test_freeze_depth_two_on_vit_trains_last_two_blocks_and_final_norm() -> None:
    model = make_classifier(create_backbone("vit_small_patch16_224", pretrained=False))
    FreezeDepth(2).freeze_before_training(model)
    trainable = trainable_names(model.backbone)
    assert trainable == names_under(model.backbone, ["blocks.10.", "blocks.11.", "norm."])
    frozen = set(weights(model.backbone)) - trainable
    expected_frozen = names_under(
        model.backbone,
        ["patch_embed.", "cls_token", "pos_embed", *(f"blocks.{i}." for i in range(10))],
    )
    assert frozen == expected_frozen


def test_freeze_depth_beyond_stage_count_fails_naming_the_count() -> None:
    with pytest.raises(PlateauError, match=r"freeze\.depth=6 is beyond the backbone's 5 stages"):
        fit(make_classifier(), [FreezeDepth(6)])


def test_negative_freeze_depth_is_rejected() -> None:
    with pytest.raises(PlateauError, match=r"freeze\.depth=-1"):
        FreezeDepth(-1)


# --- stage structure ----------------------------------------------------------------------

STAGE_BACKBONES = ["resnet18", "tf_efficientnet_lite0", "mobilenetv3_large_100", "convnext_tiny",
                   "vit_small_patch16_224", "inception_v3"]


@pytest.fixture(scope="module", params=STAGE_BACKBONES)
def headless(request: pytest.FixtureRequest) -> nn.Module:
    return timm.create_model(request.param, pretrained=False, num_classes=0)


def test_stages_hold_every_parameter_and_batchnorm_exactly_once(headless: nn.Module) -> None:
    stages = backbone_stages(headless)
    params = [id(p) for s in stages for p in s.parameters]
    assert len(params) == len(set(params))
    assert set(params) == {id(p) for p in headless.parameters()}
    bns = [id(bn) for s in stages for bn in s.batchnorms]
    assert sorted(bns) == sorted(id(m) for m in headless.modules() if isinstance(m, _BatchNorm))
    assert len(stages) > 1
    assert all(s.parameters for s in stages), "every stage freezes something"


def test_first_stage_is_the_stem(headless: nn.Module) -> None:
    first_conv = headless.get_submodule(headless.pretrained_cfg["first_conv"])
    assert any(p is first_conv.weight for p in backbone_stages(headless)[0].parameters)


# --- gradual unfreezing -------------------------------------------------------------------

@dataclass
class GradualRun:
    snapshot: Snapshot
    recorder: EpochRecorder


@pytest.fixture(scope="module")
def gradual_run() -> GradualRun:
    recorder = EpochRecorder()
    model = make_classifier(backbone_lr_mult=0.1)
    run = snapshot_then_fit(model, [GradualUnfreeze(milestones=[1, 2]), recorder], epochs=3)
    return GradualRun(run, recorder)


def test_gradual_unfreeze_opens_one_stage_per_milestone_from_the_top(
        gradual_run: GradualRun) -> None:
    assert gradual_run.recorder.trainable == [
        [False, False, False, False, False],
        [False, False, False, False, True],
        [False, False, False, True, True],
    ]


def test_gradual_unfreeze_adds_a_param_group_at_head_lr_times_backbone_lr_mult(
        gradual_run: GradualRun) -> None:
    assert gradual_run.recorder.lrs == [
        pytest.approx([0.1]),
        pytest.approx([0.1, 0.01]),
        pytest.approx([0.1, 0.01, 0.01]),
    ]


def test_gradual_unfreeze_leaves_lower_stages_and_their_batchnorm_untouched(
        gradual_run: GradualRun) -> None:
    run = gradual_run.snapshot
    backbone = run.model.backbone
    lower = ("conv1.", "bn1.", "layer1.", "layer2.")
    moved = changed(run.backbone, weights(backbone))
    assert moved & names_under(backbone, ["layer3."]), "the stages above did train"
    assert moved & names_under(backbone, ["layer4."]), "the stages above did train"
    assert not moved & names_under(backbone, lower)
    assert not changed(run.stats, bn_stats(backbone)) & stats_under(run.stats, lower)


def test_gradual_unfreeze_lets_unfrozen_batchnorm_follow_the_data(
        gradual_run: GradualRun) -> None:
    # layer4 trains in epochs 1-2 like it does under freeze.depth>=1: its BatchNorm layers must
    # leave eval mode and update their running statistics.
    run = gradual_run.snapshot
    moved = changed(run.stats, bn_stats(run.model.backbone))
    assert stats_under(run.stats, ["layer4."]) <= moved


def test_gradual_unfreeze_group_follows_the_lr_schedule_at_backbone_lr_mult() -> None:
    recorder = EpochRecorder()
    model = make_classifier(backbone_lr_mult=0.1, lr_schedule=warmup_cosine)
    fit(model, [GradualUnfreeze(milestones=[1, 2]), recorder], epochs=3)
    after_unfreeze = [lrs for lrs in recorder.step_lrs if len(lrs) > 1]
    assert after_unfreeze, "a backbone group was added"
    head_lrs = [lrs[0] for lrs in after_unfreeze]
    assert len(set(head_lrs)) > 1, "the schedule moves the head's lr"
    for lrs in after_unfreeze:
        assert [lr / lrs[0] for lr in lrs[1:]] == pytest.approx([0.1] * (len(lrs) - 1))
    assert len(recorder.step_lrs[-1]) == 3


@pytest.mark.parametrize("milestones", [[], [0], [2, 1], [1, 1]])
def test_gradual_unfreeze_rejects_milestones_that_are_not_increasing_epochs(
        milestones: list[int]) -> None:
    with pytest.raises(PlateauError, match=r"freeze\.milestones="):
        GradualUnfreeze(milestones=milestones)


# --- full fine-tuning ---------------------------------------------------------------------

def test_train_all_trains_every_backbone_parameter() -> None:
    run = snapshot_then_fit(make_classifier(), [TrainAll()])
    backbone = run.model.backbone
    assert trainable_names(backbone) == set(run.backbone)
    assert changed(run.backbone, weights(backbone)) == set(run.backbone)
    assert changed(run.stats, bn_stats(backbone)) == set(run.stats)


# --- tensor layout ------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "channels_last"), [("test_efficientnet", True),
                                                     ("test_resnet", False)])
def test_cpu_fit_runs_channels_last_only_for_backbones_with_depthwise_convolutions(
        name: str, channels_last: bool) -> None:
    """Depthwise convolutions train faster on the CPU in NHWC, plain ones do not: an
    EfficientNet fits in channels-last, a ResNet in the default layout, both still learning."""
    model = make_classifier(create_backbone(name, pretrained=False))
    before = weights(model.backbone)
    fit(model, [TrainAll()])
    assert model.channels_last is channels_last
    convs = [m.weight for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) == channels_last
               for w in convs if w.shape[2:] != (1, 1))  # 1x1 kernels are both layouts
    assert changed(before, weights(model.backbone)) == set(before)


# --- LP-FT --------------------------------------------------------------------------------

@dataclass
class LpFtRun:
    snapshot: Snapshot
    recorder: EpochRecorder
    weights_after_probe: dict[str, torch.Tensor]


class _AfterEpoch(Callback):
    """The backbone's weights at the end of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self.weights = weights(pl_module.backbone)


@pytest.fixture(scope="module")
def lp_ft_run() -> LpFtRun:
    recorder, probe_end = EpochRecorder(), _AfterEpoch(1)
    model = make_classifier(backbone_lr_mult=0.1, lr_schedule=constant)
    run = snapshot_then_fit(model, [LinearProbeThenFineTune(probe_epochs=2, lr_mult=0.1,
                                                            warmup_epochs=1),
                                    recorder, probe_end], epochs=4)
    return LpFtRun(run, recorder, probe_end.weights)


def test_lp_ft_probes_the_head_then_trains_every_stage(lp_ft_run: LpFtRun) -> None:
    assert lp_ft_run.recorder.trainable == [[False] * 5, [False] * 5, [True] * 5, [True] * 5]
    run = lp_ft_run.snapshot
    assert not changed(run.backbone, lp_ft_run.weights_after_probe)  # a true linear probe
    moved = changed(run.backbone, weights(run.model.backbone))
    for prefixes in RESNET_STAGE_PREFIXES:  # then every stage fine-tunes
        assert moved & names_under(run.model.backbone, prefixes)
    assert stats_under(run.stats, ["bn1.", "layer1."]) <= changed(
        run.stats, bn_stats(run.model.backbone))


def test_lp_ft_switches_at_epoch_k_with_a_fresh_warmup_and_its_own_lr(
        lp_ft_run: LpFtRun) -> None:
    steps = lp_ft_run.recorder.step_lrs
    probe = [lrs for lrs in steps if len(lrs) == 1]
    tuned = [lrs for lrs in steps if len(lrs) == 2]
    assert probe
    assert tuned
    assert len(probe) + len(tuned) == len(steps)
    assert [lrs[0] for lrs in probe] == [pytest.approx(0.1)] * len(probe)  # the probe's lr
    heads = [lrs[0] for lrs in tuned]
    per_epoch = len(steps) // 4
    ramp = heads[:per_epoch]
    assert ramp[0] < 0.01 * 0.5  # warming up again from near zero ...
    assert all(b > a for a, b in zip(ramp, ramp[1:], strict=False))
    assert heads[per_epoch:] == [pytest.approx(0.01)] * (len(heads) - per_epoch)  # ... to 0.1x
    for lrs in tuned:  # the backbone at backbone_lr_mult x the head's, warm-up included
        assert lrs[1] / lrs[0] == pytest.approx(0.1)
