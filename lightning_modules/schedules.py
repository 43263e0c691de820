"""Learning-rate schedules, built once the number of optimizer steps is known.

Each builder takes the optimizer, the total number of optimizer steps and the steps per epoch
(Lightning's ``estimated_stepping_batches``), plus its own settings in epochs, and returns a
Lightning ``lr_scheduler`` config dict. Step-wise schedules are a :class:`FactorSchedule`: a
multiplier of each param group's ``initial_lr``, so param groups added later by gradual
unfreezing follow the same schedule (torch's ``OneCycleLR`` and ``LambdaLR`` keep per-group
state from construction and would leave such groups unscheduled or fail).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

#: Param-group keys of a warm-up that restarts mid-fit (LP-FT's fine-tuning phase): the
#: step it starts at and its length in steps.
WARMUP_FROM, WARMUP_STEPS = "warmup_from_step", "warmup_steps"


class FactorSchedule(LRScheduler):
    """``lr = initial_lr * factor(step)`` for every param group, including groups added later.

    A group that carries :data:`WARMUP_FROM` / :data:`WARMUP_STEPS` (set by a callback that
    starts a new phase, :class:`lightning_modules.freezing.LinearProbeThenFineTune`) is also
    ramped linearly from the phase's first step over its warm-up.
    """

    def __init__(self, optimizer: Optimizer, factor: Callable[[int], float]) -> None:
        self.factor = factor
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        scale = self.factor(self.last_epoch)
        return [group.setdefault("initial_lr", group["lr"]) * scale * self._ramp(group)
                for group in self.optimizer.param_groups]

    def _ramp(self, group: dict[str, Any]) -> float:
        start, length = group.get(WARMUP_FROM), group.get(WARMUP_STEPS, 0)
        if start is None or length <= 0:
            return 1.0
        return min(max(self.last_epoch - start + 1, 1) / (length + 1), 1.0)


def _constant_factor(step: int) -> float:
    return 1.0


def _warmup_cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _step_factor(step: int, every: int, gamma: float) -> float:
    return gamma ** (step // every)


def _one_cycle_factor(step: int, rise: int, total: int, start: float, end: float) -> float:
    if step < rise:
        return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * step / max(rise, 1)))
    progress = min((step - rise) / max(total - rise, 1), 1.0)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _per_step(optimizer: Optimizer, factor: Callable[[int], float]) -> dict[str, Any]:
    return {"scheduler": FactorSchedule(optimizer, factor), "interval": "step"}


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> dict[str, Any]:
    """The optimizer's learning rate throughout."""
    return _per_step(optimizer, _constant_factor)


def warmup_cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
                  warmup_epochs: float = 1.0, min_lr_ratio: float = 0.01) -> dict[str, Any]:
    """Linear warmup over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` x lr."""
    warmup = min(int(warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    factor = functools.partial(_warmup_cosine_factor, warmup=warmup, total=total_steps,
                               floor=min_lr_ratio)
    return _per_step(optimizer, factor)


def step(optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
         step_epochs: int = 2, gamma: float = 0.1) -> dict[str, Any]:
    """Multiply the learning rate by ``gamma`` every ``step_epochs`` epochs."""
    factor = functools.partial(_step_factor, every=max(step_epochs * steps_per_epoch, 1),
                               gamma=gamma)
    return _per_step(optimizer, factor)


def one_cycle(optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
              pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> dict[str, Any]:
    """Smith's 1cycle: cosine rise from lr/div_factor to lr, then cosine decay far below."""
    factor = functools.partial(
        _one_cycle_factor, rise=int(pct_start * total_steps), total=total_steps,
        start=1.0 / div_factor, end=1.0 / (div_factor * final_div_factor),
    )
    return _per_step(optimizer, factor)


def reduce_on_plateau(optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
                      monitor: str = "val/loss", factor: float = 0.1, patience: int = 1,
                      min_lr: float = 0.0) -> dict[str, Any]:
    """Divide the learning rate when ``monitor`` (minimized) stops improving, checked per epoch."""
    scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                  min_lr=min_lr)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}
