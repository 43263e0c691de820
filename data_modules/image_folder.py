"""The user's images: ``root/<class>/<image>``, or ``root/{train,val}/<class>/<image>``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.cache_dir import cache_root
from data_modules.datamodules import ClassificationDataModule, ImageDataset, Item, Split
from data_modules.decoded_cache import validation_resize, with_decoded_cache
from data_modules.images import IMAGE_SUFFIXES
from sweeps.errors import PlateauError

log = logging.getLogger(__name__)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan_class_folders(root: Path) -> dict[str, list[Path]]:
    """Class name -> image files under ``root/<class>/`` (nested folders in, hidden ones out)."""
    classes: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p.name)):
        files = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            and all(_visible(part) for part in p.relative_to(folder).parts)
        )
        classes[folder.name] = files
    return classes


def _check_classes(where: Path, classes: dict[str, list[Path]]) -> None:
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise PlateauError(
            f"{where} has {len(classes)} class folder(s) ({found}): a classifier needs at least "
            f"two; put each class's images in its own subfolder, {where}/<class>/<image>"
        )
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise PlateauError(
            f"class folder(s) {', '.join(empty)} in {where} hold no images (suffixes "
            f"{' '.join(IMAGE_SUFFIXES)}): add images or remove the folder"
        )


def _flatten(classes: dict[str, list[Path]], names: list[str]) -> Split:
    index = {name: i for i, name in enumerate(names)}
    items: list[Item] = [path for name in classes for path in classes[name]]
    targets = [index[name] for name in classes for _ in classes[name]]
    return items, np.asarray(targets, dtype=np.int64)


class ImageFolderDataModule(ClassificationDataModule):
    """Images in class folders, decoded to RGB (grayscale, palette and RGBA included).

    Validation comes from ``root/val/`` when both ``root/train/`` and ``root/val/`` exist;
    otherwise from a stratified, seeded split of ``root`` with ``val_fraction``.

    Args:
        root: the folder (``data.root``).
        decoded_cache: decode and resize each file once into a memory-mapped cache
            (:mod:`data_modules.decoded_cache`; validation tensors stay bit-identical) when
            ``setup`` runs, instead of decoding every image in every epoch.
        cache_dir: plateau's cache folder; None: ``$PLATEAU_CACHE_DIR`` or ``~/.cache/plateau``.
        **kwargs: see :class:`~data_modules.datamodules.ClassificationDataModule`.
    """

    def __init__(self, root: str | None = None, decoded_cache: bool = False,
                 cache_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decoded_cache = decoded_cache
        self.cache_dir = cache_root(cache_dir)
        if root is None or str(root) in ("", "???"):
            raise PlateauError(
                "data.root is not set: point it at a folder of class subfolders, "
                "e.g. python sweep.py data=image_folder data.root=/path/to/images"
            )
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise PlateauError(
                f"data.root={root} is not a folder: give the folder that holds one subfolder "
                "per class (or train/ and val/ folders of them)"
            )

    def load_splits(self) -> tuple[list[str], Split, Split]:
        train_dir, val_dir = self.root / "train", self.root / "val"
        if train_dir.is_dir() and val_dir.is_dir():
            train, val = scan_class_folders(train_dir), scan_class_folders(val_dir)
            _check_classes(train_dir, train)
            unknown = sorted(set(val) - set(train))
            if unknown:
                raise PlateauError(
                    f"{val_dir} has class folder(s) {', '.join(unknown)} that {train_dir} lacks: "
                    "give every validation class training images, or remove those folders"
                )
            names = list(train)
            return names, _flatten(train, names), _flatten(val, names)
        classes = scan_class_folders(self.root)
        _check_classes(self.root, classes)
        names = list(classes)
        items, targets = _flatten(classes, names)
        train_split, val_split = self.split(items, targets)
        return names, train_split, val_split

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        super().setup(stage)
        train, val = self.train_set, self.val_set
        if self.decoded_cache and isinstance(train, ImageDataset) and isinstance(val, ImageDataset):
            self.train_set, self.val_set = self._cached(train, val)

    def _cached(self, train: ImageDataset, val: ImageDataset) -> list[ImageDataset]:
        resize = validation_resize(self.val_transform)
        if resize is None:
            log.warning("decoded-image cache off: the validation transform has no Resize")
            return [train, val]
        return with_decoded_cache([train, val], self.cache_dir / "decoded", resize,
                                  threads=self.num_workers)
