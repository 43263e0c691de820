"""Freezing strategies as Lightning ``BaseFinetuning`` callbacks.

BatchNorm policy: a frozen stage's BatchNorm layers are kept in eval mode for the whole fit,
so they normalize with their pretrained running statistics and never update them. (Lightning's
own ``BaseFinetuning.freeze`` instead stops tracking and normalizes with batch statistics while
training, which makes training and validation see different networks.) With
``train_bn=True`` BatchNorm layers of frozen stages keep training: affine parameters get
gradients and running statistics follow the new data.

The module never flips ``requires_grad`` itself; these callbacks do, before the optimizer is
built, so ``configure_optimizers`` sees only what trains.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from errors import PlateauError
from lightning_modules.schedules import WARMUP_FROM, WARMUP_STEPS
from lightning_modules.stages import Stage, backbone_stages

log = logging.getLogger(__name__)


class StageFreezing(BaseFinetuning):
    """Freeze the bottom stages of ``pl_module.backbone``; subclasses say how many.

    Args:
        train_bn: let BatchNorm layers of frozen stages train (see the module docstring).
    """

    def __init__(self, train_bn: bool = False) -> None:
        super().__init__()
        self.train_bn = train_bn
        self._stages: list[Stage] = []
        self._frozen_bns: list[_BatchNorm] = []
        self._whole_backbone_frozen = False

    def frozen_stage_count(self, num_stages: int) -> int:
        """How many stages, counted from the input, are frozen when training starts."""
        return 0

    def check(self, backbone: nn.Module) -> int:
        """Validate the strategy against a backbone before a fit; returns the frozen stage count."""
        return self.frozen_stage_count(len(backbone_stages(backbone)))

    def freezes_whole_backbone(self, backbone: nn.Module) -> bool:
        """The backbone is a fixed function for the whole fit: every stage frozen from the start,
        BatchNorm statistics included, nothing unfrozen later. The backbone then runs in eval
        mode throughout (no dropout or stochastic depth), so its features can be cached."""
        return not self.train_bn and self.check(backbone) == len(backbone_stages(backbone))

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self._stages = backbone_stages(pl_module.backbone)  # type: ignore[arg-type]
        count = self.frozen_stage_count(len(self._stages))
        for stage in self._stages[:count]:
            self._freeze_stage(stage)
        self._whole_backbone_frozen = self.freezes_whole_backbone(pl_module.backbone)  # type: ignore[arg-type]

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """Nothing unfreezes during training unless a subclass says so."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: object, batch_idx: int) -> None:
        # Cheap insurance: anything calling model.train() (a user callback, a custom loop)
        # would otherwise let frozen BatchNorm layers drift.
        for bn in self._frozen_bns:
            bn.eval()
        if self._whole_backbone_frozen:
            pl_module.backbone.eval()  # type: ignore[union-attr]

    def _freeze_stage(self, stage: Stage) -> None:
        bn_params = {id(p) for bn in stage.batchnorms for p in bn.parameters(recurse=False)}
        for param in stage.parameters:
            if not (self.train_bn and id(param) in bn_params):
                param.requires_grad = False
        if not self.train_bn:
            self._frozen_bns.extend(stage.batchnorms)
            for bn in stage.batchnorms:
                bn.eval()

    def _unfreeze_stage(self, stage: Stage) -> list:
        """Make a stage trainable; returns its parameters that were frozen."""
        thawed = [p for p in stage.parameters if not p.requires_grad]
        for param in thawed:
            param.requires_grad = True
        thawed_bns = {id(bn) for bn in stage.batchnorms}
        self._frozen_bns = [bn for bn in self._frozen_bns if id(bn) not in thawed_bns]
        for bn in stage.batchnorms:
            bn.train()  # its running statistics follow the data again, like its weights
        return thawed

    @staticmethod
    def _add_backbone_group(pl_module: pl.LightningModule, optimizer: Optimizer,
                            thawed: list) -> None:
        """Train the ``thawed`` backbone parameters at the head's learning rate (and
        ``initial_lr``, what a step-wise schedule scales) times ``backbone_lr_mult``."""
        if not thawed:
            return
        mult = float(getattr(pl_module, "backbone_lr_mult", 1.0))
        head = optimizer.param_groups[0]
        optimizer.add_param_group({"params": thawed, **{
            key: head[key] * mult for key in ("lr", "initial_lr") if key in head}})


class TrainAll(StageFreezing):
    """Full fine-tuning: every stage trains from the first step (``freeze=none``)."""

    def check(self, backbone: nn.Module) -> int:
        return 0

    def freezes_whole_backbone(self, backbone: nn.Module) -> bool:
        return False

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Nothing to freeze; does not need a stage structure."""


class HeadOnly(StageFreezing):
    """Linear probe: the whole backbone is frozen, only the head trains (``freeze=head_only``)."""

    def frozen_stage_count(self, num_stages: int) -> int:
        return num_stages


class FreezeDepth(StageFreezing):
    """Train the top ``depth`` stages of the backbone (``freeze=depth freeze.depth=k``).

    Args:
        depth: number of stages, counted from the output, that train; 0 is a linear probe and
            the backbone's stage count is full fine-tuning.
    """

    def __init__(self, depth: int, train_bn: bool = False) -> None:
        super().__init__(train_bn)
        if depth < 0:
            raise PlateauError(f"freeze.depth={depth} is negative: use 0 (head only) or more")
        self.depth = depth

    def frozen_stage_count(self, num_stages: int) -> int:
        if self.depth > num_stages:
            raise PlateauError(
                f"freeze.depth={self.depth} is beyond the backbone's {num_stages} stages "
                f"(stem + {num_stages - 1} block groups): use freeze.depth between 0 and "
                f"{num_stages}"
            )
        return num_stages - self.depth


class GradualUnfreeze(StageFreezing):
    """Start as a linear probe and unfreeze stages from the top at epoch milestones.

    At ``milestones[i]`` the next ``stages_per_milestone`` stages below those already training
    are unfrozen and added to the optimizer as a new param group, with the head's learning rate
    times the module's ``backbone_lr_mult``.

    Args:
        milestones: strictly increasing epochs (>= 1) at which to unfreeze.
        stages_per_milestone: stages unfrozen at each milestone.
    """

    def __init__(self, milestones: Sequence[int], stages_per_milestone: int = 1,
                 train_bn: bool = False) -> None:
        super().__init__(train_bn)
        milestones = list(milestones)
        if not milestones or milestones[0] < 1 or any(
            b <= a for a, b in zip(milestones, milestones[1:], strict=False)
        ):
            raise PlateauError(
                f"freeze.milestones={milestones} must be strictly increasing epochs >= 1, "
                "e.g. freeze.milestones=[1,3]"
            )
        if stages_per_milestone < 1:
            raise PlateauError(
                f"freeze.stages_per_milestone={stages_per_milestone} must be at least 1"
            )
        self.milestones = milestones
        self.stages_per_milestone = stages_per_milestone

    def frozen_stage_count(self, num_stages: int) -> int:
        return num_stages

    def freezes_whole_backbone(self, backbone: nn.Module) -> bool:
        return False  # stages unfreeze at the milestones

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch not in self.milestones:
            return
        step = self.milestones.index(epoch)
        top = len(self._stages) - step * self.stages_per_milestone
        bottom = max(top - self.stages_per_milestone, 0)
        thawed = [p for stage in self._stages[bottom:top] for p in self._unfreeze_stage(stage)]
        if not thawed:
            return
        self._add_backbone_group(pl_module, optimizer, thawed)
        log.info("epoch %d: unfroze backbone stages %d..%d (%d tensors)", epoch, bottom, top - 1,
                 len(thawed))


class LinearProbeThenFineTune(StageFreezing):
    """LP-FT (Kumar et al., ICLR 2022): a linear probe for ``probe_epochs``, then every stage
    trains (``freeze=lp_ft``).

    Fine-tuning from a fitted head instead of a random one keeps the pretrained features
    from being distorted by the head's early, large gradients. At epoch ``probe_epochs`` the
    whole backbone is unfrozen (BatchNorm statistics follow the data again), its parameters
    join the optimizer at the head's learning rate times the module's ``backbone_lr_mult``,
    every learning rate is multiplied by ``lr_mult``, and all param groups warm up again
    linearly over ``warmup_epochs`` (on the step-wise schedules; ``lr_schedule=plateau``
    has no warm-up).

    Args:
        probe_epochs: epochs of the head-only phase (>= 1).
        lr_mult: learning rates of the fine-tuning phase relative to the probe's.
        warmup_epochs: length of the fine-tuning phase's warm-up.
    """

    def __init__(self, probe_epochs: int = 2, lr_mult: float = 0.1, warmup_epochs: float = 1.0,
                 train_bn: bool = False) -> None:
        super().__init__(train_bn)
        if probe_epochs < 1:
            raise PlateauError(f"freeze.probe_epochs={probe_epochs} must be at least 1")
        self.probe_epochs = probe_epochs
        self.lr_mult = lr_mult
        self.warmup_epochs = warmup_epochs

    def frozen_stage_count(self, num_stages: int) -> int:
        return num_stages

    def freezes_whole_backbone(self, backbone: nn.Module) -> bool:
        return False  # everything unfreezes after the probe

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch != self.probe_epochs:
            return
        thawed = [p for stage in self._stages for p in self._unfreeze_stage(stage)]
        for group in optimizer.param_groups:
            for key in ("lr", "initial_lr"):  # initial_lr: what a step-wise schedule scales
                if key in group:
                    group[key] *= self.lr_mult
        self._add_backbone_group(pl_module, optimizer, thawed)
        trainer = pl_module.trainer
        per_epoch = max(int(trainer.estimated_stepping_batches) // max(trainer.max_epochs or 1, 1),
                        1)
        for group in optimizer.param_groups:
            group[WARMUP_FROM] = trainer.global_step
            group[WARMUP_STEPS] = int(self.warmup_epochs * per_epoch)
        log.info("epoch %d: linear probe done; fine-tuning all %d stages (%d tensors) at "
                 "%.3g x the learning rate, warm-up %s epoch(s)", epoch, len(self._stages),
                 len(thawed), self.lr_mult, self.warmup_epochs)
