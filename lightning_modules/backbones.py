"""Feature extractors from timm, with pretrained weights that never silently go missing.

Weights for ``pretrained=True`` are looked for, in order: ``weights_file``; a package that ships
them (:mod:`lightning_modules.offline_weights`); the Hugging Face cache; a download when the hub
is reachable. If none works the run stops with a :class:`~errors.PlateauError` saying how
to provide them: a model is never trained from random weights unless ``pretrained=false``.
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import re
import socket
import zipfile
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from torch import nn

from errors import PlateauError, one_line
from lightning_modules.offline_weights import OFFLINE_WEIGHTS

log = logging.getLogger(__name__)

_HUB_HOST = ("huggingface.co", 443)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights_file: str | None = None,
    drop_path_rate: float = 0.0,
    **model_kwargs: Any,
) -> nn.Module:
    """Build a timm model without its classifier: ``forward`` returns pooled features.

    Args:
        name: any timm model name (``timm.list_models()``).
        pretrained: load pretrained weights; an error if none can be found.
        weights_file: a local ``.pth``/``.safetensors`` state dict for this architecture.
        drop_path_rate: stochastic depth; ignored with a warning by architectures without it.
        model_kwargs: passed to the model constructor (e.g. ``dynamic_img_size`` for ViTs).

    Returns:
        The model, with ``num_features`` (feature width) and ``pretrained_cfg`` (preprocessing
        of its pretraining) as timm defines them.
    """
    if not timm.is_model(name):
        raise PlateauError(_unknown_model_message(name))
    kwargs: dict[str, Any] = {"num_classes": 0, **model_kwargs}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        return _create(name, pretrained, weights_file, kwargs)
    except TypeError as err:
        if "drop_path_rate" not in kwargs or "drop_path_rate" not in str(err):
            raise
    log.warning("backbone %s has no stochastic depth; regularization.drop_path ignored", name)
    del kwargs["drop_path_rate"]
    return _create(name, pretrained, weights_file, kwargs)


def check_input_size(backbone: nn.Module, name: str, size: int) -> None:
    """One forward pass of a blank image of side ``size``: an architecture that cannot take
    it (Inception v3 below 75 px) fails here, in one line, not in the first training step.

    The backbone is run in eval mode (BatchNorm takes a batch of one) and left as it was.
    """
    was_training = backbone.training
    channels = int(getattr(backbone, "pretrained_cfg", {}).get("input_size", (3,))[0])
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, channels, size, size))
    except RuntimeError as err:
        raise PlateauError(
            f"data.image_size={size} is too small for backbone {name} "
            f"({_mismatch(err)}): use a larger data.image_size, or null for its pretrained "
            "size") from err
    finally:
        backbone.train(was_training)


def _create(name: str, pretrained: bool, weights_file: str | None, kwargs: dict) -> nn.Module:
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise PlateauError(
                f"backbone.weights_file={weights_file} does not exist: give the path of a saved "
                f"state dict for {name}, or remove the override"
            )
        return _from_file(name, path, kwargs, f"backbone.weights_file={weights_file}")
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if name in OFFLINE_WEIGHTS:
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_without_classifier(model, OFFLINE_WEIGHTS[name]())
        return model
    cached = _cached_hub_file(name)
    if cached is not None:
        return _from_file(name, cached, kwargs, f"the cached hub file {cached}")
    if not _hub_reachable():
        raise PlateauError(
            f"pretrained weights for backbone '{name}' are not available offline: download them "
            f"once where there is network (python -c \"import timm; timm.create_model('{name}', "
            "pretrained=True)\"), or give a local file with backbone.weights_file=PATH, or train "
            "from scratch with backbone.pretrained=false"
        )
    return timm.create_model(name, pretrained=True, **kwargs)


def _from_file(name: str, path: Path, kwargs: dict, source: str) -> nn.Module:
    """Build ``name`` and load every non-classifier weight from ``path``, strictly.

    (timm's own file loading turns non-strict when the head size differs, so a file of another
    architecture would load nothing and leave random weights.) A checkpoint of plateau's
    classifier is accepted too: its ``backbone.*`` keys are used.
    """
    model = timm.create_model(name, pretrained=False, **kwargs)
    state_dict = _read_weights(path, source)
    if any(key.startswith("backbone.") for key in state_dict):
        state_dict = {key[len("backbone."):]: value for key, value in state_dict.items()
                      if key.startswith("backbone.")}
    try:
        _load_without_classifier(model, state_dict)
    except RuntimeError as err:
        raise PlateauError(
            f"{source} does not fit backbone '{name}' ({_mismatch(err)}): give "
            "weights saved from this architecture, or pick the matching backbone.name"
        ) from err
    return model


#: What reading a file that is not a checkpoint raises, by format: torch's pickle (zip or
#: legacy), safetensors' header, or the file system.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, KeyError, IndexError, EOFError,
               ValueError, TypeError, zipfile.BadZipFile, SafetensorError)
_GLOBALS = re.compile(r"Unsupported globals?: ([^.]+(?:\.[\w]+)*)")


def _read_weights(path: Path, source: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (torch checkpoint or safetensors), read without running
    any pickled code; a file that is not one is a one-line error saying which it is."""
    save = "save one with torch.save(model.state_dict(), path) or give a .safetensors file"
    try:
        state_dict = timm.models.load_state_dict(str(path), weights_only=True)
    except OSError as err:
        raise PlateauError(f"{source} cannot be read ({one_line(err, 160)}): check the path "
                           "and its permissions") from err
    except _UNREADABLE as err:
        found = _GLOBALS.search(str(err))
        if found:  # a pickle of Python objects (a whole model), not a dict of tensors
            raise PlateauError(f"{source} holds pickled Python objects ({found[1]}), not a "
                               f"state dict of tensors: {save}") from err
        terse = isinstance(err, (KeyError, IndexError, EOFError))  # the unpickler's internals
        why = "" if terse else f" ({one_line(err, 120)})"
        raise PlateauError(f"{source} is not a torch checkpoint or safetensors file{why}: "
                           f"{save}") from err
    if not isinstance(state_dict, dict):
        raise PlateauError(f"{source} holds a {type(state_dict).__name__}, not a state dict "
                           f"of tensors: {save}")
    return state_dict


def _mismatch(err: RuntimeError) -> str:
    """The first specific line of a ``load_state_dict`` error (missing/unexpected/size)."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    detail = lines[0] if lines else str(err).strip()
    return detail if len(detail) <= 200 else detail[:197] + "..."


def _load_without_classifier(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a full-model state dict into a headless model; every other key must match."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    body = {k: v for k, v in state_dict.items() if not k.startswith(f"{head}.")}
    model.load_state_dict(body, strict=True)


def _cached_hub_file(name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in _WEIGHT_FILES:
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or huggingface.co does not answer."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (
        f"unknown backbone '{name}'{hint}: backbone.name must be a timm model name, "
        "see python -c \"import timm; print(timm.list_models('*resnet*'))\""
    )
