"""A backbone's stage structure, as timm's ``group_matcher`` defines it.

Stages are ordered from input to output: the stem first, then each block group. Layers that
timm leaves unmatched (a neck such as MobileNetV3's ``conv_head``) join the last stage, as the
final norm of a ViT or EfficientNet already does in timm. ``freeze.depth=k`` counts these
stages, so ``k`` means "the top k stages" for a ResNet (stem + 4 layers) and a ViT (stem + 12
blocks) alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from timm.models._manipulate import MATCH_PREV_GROUP, group_with_matcher
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from errors import PlateauError


@dataclass
class Stage:
    """The parameters of one stage, and its BatchNorm layers (whose running stats are buffers)."""

    parameters: list[nn.Parameter] = field(default_factory=list)
    batchnorms: list[_BatchNorm] = field(default_factory=list)


def backbone_stages(backbone: nn.Module) -> list[Stage]:
    """Split a timm backbone into stages, input side first.

    Every parameter and every BatchNorm layer (affine or not) belongs to exactly one stage.

    Raises:
        PlateauError: the architecture does not define a ``group_matcher``.
    """
    group_matcher = getattr(backbone, "group_matcher", None)
    if group_matcher is None:
        raise PlateauError(
            f"backbone {type(backbone).__name__} has no stage structure (timm group_matcher), so "
            "freeze.depth and gradual unfreezing cannot count its stages: use freeze=head_only "
            "or freeze=none"
        )
    matcher = group_matcher(coarse=True)
    if isinstance(matcher, dict):
        # Unmatched layers would form a stage of their own; fold them into the top stage.
        matcher = {**matcher, "_unmatched": [(r".*", MATCH_PREV_GROUP)]}
    # BatchNorm layers are grouped by a name inside them, like their parameters would be.
    named: list[tuple[str, nn.Parameter | _BatchNorm]] = list(backbone.named_parameters())
    named += [
        (f"{name}.running_mean", module)
        for name, module in backbone.named_modules()
        if isinstance(module, _BatchNorm)
    ]
    grouped = group_with_matcher(iter(named), matcher, return_values=True)
    stages = []
    for group in sorted(grouped):
        stage = Stage()
        for item in grouped[group]:
            if isinstance(item, _BatchNorm):
                stage.batchnorms.append(item)
            else:
                stage.parameters.append(item)
        stages.append(stage)
    return stages
