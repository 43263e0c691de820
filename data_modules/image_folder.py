"""The user's images: ``root/<class>/<image>``, or ``root/{train,val}/<class>/<image>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data_modules.datamodules import ClassificationDataModule, Item, Split
from data_modules.images import IMAGE_SUFFIXES
from sweeps.errors import PlateauError


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
        **kwargs: see :class:`~data_modules.datamodules.ClassificationDataModule`.
    """

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
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
