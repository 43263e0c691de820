"""What a trained classifier costs to serve: latency, parameters and multiply-accumulates.

Latency is measured on the device the model trained on, in eval mode under ``no_grad``, on
a batch of blank images of the trial's input size: a few warm-up calls first (kernel choice,
allocator, caches), then the median of ``repeats`` timed calls, each synchronized on CUDA so
the time is the device's and not the launch's. MACs are counted by PyTorch's own
``FlopCounterMode`` on one image (a multiply-accumulate is two FLOPs).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: The batch a deployed model serves at, beside batch 1 (one request at a time).
SERVING_BATCH = 32
WARMUP_CALLS = 3
REPEATS = 10


@dataclass(frozen=True)
class ServingCost:
    """Milliseconds per batch at batch 1 and at :data:`SERVING_BATCH`, parameters, MACs."""

    latency_ms: float
    serving_latency_ms: float
    serving_batch: int
    params: int
    macs: int

    def metrics(self) -> dict[str, float]:
        """As logged (MLflow metrics and objective names): ``model/latency_ms`` ..."""
        return {"model/latency_ms": self.latency_ms,
                f"model/latency_ms_b{self.serving_batch}": self.serving_latency_ms,
                "model/params": float(self.params), "model/macs": float(self.macs)}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def median_latency_ms(model: nn.Module, images: torch.Tensor, repeats: int = REPEATS) -> float:
    """Median wall time of ``model(images)`` in milliseconds, after :data:`WARMUP_CALLS`."""
    for _ in range(WARMUP_CALLS):
        model(images)
    _synchronize(images.device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(images)
        _synchronize(images.device)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def count_macs(model: nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``image`` (a batch of one)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(image)
    return counter.get_total_flops() // 2


def serving_cost(model: nn.Module, input_size: tuple[int, int, int], device: torch.device,
                 serving_batch: int = SERVING_BATCH, repeats: int = REPEATS) -> ServingCost:
    """Measure ``model`` (left in the mode it was in) on ``device``.

    Args:
        input_size: (channels, height, width) of one image, as the trial feeds it.
    """
    was_training = model.training
    model.eval().to(device)
    try:
        one = torch.zeros(1, *input_size, device=device)
        batch = torch.zeros(serving_batch, *input_size, device=device)
        return ServingCost(
            latency_ms=median_latency_ms(model, one, repeats),
            serving_latency_ms=median_latency_ms(model, batch, repeats),
            serving_batch=serving_batch,
            params=sum(p.numel() for p in model.parameters()),
            macs=count_macs(model, one),
        )
    finally:
        model.train(was_training)
