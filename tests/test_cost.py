"""A trained model's serving cost: MACs counted exactly on a layer we can count by hand,
latency that grows with the batch and the model, the model left as it was."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.backbones import create_backbone
from lightning_modules.cost import count_macs, serving_cost


def test_macs_of_a_convolution_and_a_linear_layer_are_counted_exactly() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    conv = 8 * 16 * 16 * 3 * 3 * 3  # outputs x (in channels x kernel)
    linear = 8 * 16 * 16 * 10
    assert count_macs(model, torch.zeros(1, 3, 16, 16)) == conv + linear


def test_serving_cost_of_a_real_backbone() -> None:
    small = create_backbone("test_resnet", pretrained=False).train()
    large = create_backbone("resnet18", pretrained=False)
    device = torch.device("cpu")
    cost = serving_cost(small, (3, 64, 64), device, serving_batch=16, repeats=5)
    assert small.training  # left as it was
    assert cost.params == sum(p.numel() for p in small.parameters())
    assert cost.serving_latency_ms > cost.latency_ms > 0
    bigger = serving_cost(large, (3, 64, 64), device, serving_batch=16, repeats=5)
    assert bigger.macs > 5 * cost.macs
    assert set(cost.metrics()) == {"model/latency_ms", "model/latency_ms_b16", "model/params",
                                   "model/macs"}
