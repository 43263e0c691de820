"""The user's images: ``root/<class>/<image>``, or ``root/{train,val}/<class>/<image>``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.bad_files import (
    BadFile,
    BadFilePolicy,
    BadImages,
    ScanRecords,
    scan,
    unreadable,
)
from data_modules.cache_dir import cache_root
from data_modules.datamodules import ClassificationDataModule, ImageDataset, Item, Split
from data_modules.decoded_cache import DecodedCache, serve_decoded, stamp, validation_resize
from data_modules.images import IMAGE_SUFFIXES
from errors import PlateauError

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


def _files(*splits: dict[str, list[Path]]) -> list[Path]:
    """Every file of the splits once, in one order (the decoded-image cache's rows)."""
    return sorted({path for classes in splits for files in classes.values() for path in files},
                  key=str)


def _without(classes: dict[str, list[Path]], skipped: set[Path],
             where: Path | None) -> dict[str, list[Path]]:
    """``classes`` less the ``skipped`` files; a class they empty is an error under ``where``
    (None: allowed, as in a validation folder)."""
    kept = {name: [path for path in files if path not in skipped]
            for name, files in classes.items()}
    emptied = [name for name, files in kept.items() if classes[name] and not files]
    if emptied and where is not None:
        raise PlateauError(
            f"class folder(s) {', '.join(emptied)} in {where} hold no images once the bad files "
            "are skipped (data.skip_bad_files=true): add images that decode, or remove the "
            "folder")
    return kept


class ImageFolderDataModule(ClassificationDataModule):
    """Images in class folders, decoded to RGB (grayscale, palette and RGBA included).

    Validation comes from ``root/val/`` when both ``root/train/`` and ``root/val/`` exist;
    otherwise from a stratified, seeded split of ``root`` with ``val_fraction``. Every listed
    file is decoded fully once at ``setup``, before the split (see
    :mod:`data_modules.bad_files`): bad files stop the run before any training, or are left out
    with ``skip_bad_files``; the classes and targets of the other files do not change.

    Args:
        root: the folder (``data.root``).
        decoded_cache: decode and resize each file once into a memory-mapped cache
            (:mod:`data_modules.decoded_cache`; validation tensors stay bit-identical) when
            ``setup`` runs, instead of decoding every image in every epoch. Its build is the
            check for bad files; without it the files are decoded once for the check alone.
        cache_dir: plateau's cache folder; None: ``$PLATEAU_CACHE_DIR`` or ``~/.cache/plateau``.
        skip_bad_files: train without the files that do not decode (one warning names the
            first few) instead of stopping with an error that lists them.
        **kwargs: see :class:`~data_modules.datamodules.ClassificationDataModule`.
    """

    def __init__(self, root: str | None = None, decoded_cache: bool = False,
                 cache_dir: str | None = None, skip_bad_files: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decoded_cache = decoded_cache
        self.cache_dir = cache_root(cache_dir)
        self.bad_files = BadFilePolicy(skip_bad_files)
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
        # serves datasets from the decoded-image entry of every file, once setup opened it
        self._serve_decoded: Callable[[list[ImageDataset]], list[ImageDataset]] | None = None

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
            skipped = self._bad_files_to_skip(_files(train, val))
            train, val = _without(train, skipped, train_dir), _without(val, skipped, None)
            names = list(train)
            return names, _flatten(train, names), _flatten(val, names)
        classes = scan_class_folders(self.root)
        _check_classes(self.root, classes)
        classes = _without(classes, self._bad_files_to_skip(_files(classes)), self.root)
        names = list(classes)
        items, targets = _flatten(classes, names)
        train_split, val_split = self.split(items, targets)
        return names, train_split, val_split

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        super().setup(stage)
        train, val = self.train_set, self.val_set
        if (self._serve_decoded is not None and isinstance(train, ImageDataset)
                and isinstance(val, ImageDataset)):
            self.train_set, self.val_set = self._serve_decoded([train, val])

    def _bad_files_to_skip(self, files: list[Path]) -> set[Path]:
        """The bad ``files`` to leave out; stops with a :class:`PlateauError` unless skipping."""
        return self.bad_files.apply(self._find_bad(files), self.root, len(files))

    def _find_bad(self, files: list[Path]) -> list[BadFile]:
        """The files that do not decode: from the scan records, the decoded-image cache's
        build (or entry), or a scan, in that order; each file is decoded at most once."""
        bad = [BadFile(path, reason) for path in files if (reason := unreadable(path))]
        missing = {b.path for b in bad}
        readable = [path for path in files if path not in missing]
        records = ScanRecords(self.cache_dir / "scans")
        known = records.get(readable)
        if known and not self.bad_files.skip:
            return sorted(bad + known, key=lambda b: str(b.path))  # it stops: decode nothing
        found = self._decode_into_cache(readable)
        if found is None:
            found = known if known is not None else scan(readable, self.num_workers)
        if known is None:
            records.put(readable, found)
        return sorted(bad + found, key=lambda b: str(b.path))

    def _decode_into_cache(self, files: list[Path]) -> list[BadFile] | None:
        """Open or build the decoded-image entry of ``files``; the bad ones among them, or
        None where there is no cache (off, or not writable)."""
        if not (self.decoded_cache and files):
            return None
        resize = validation_resize(self.val_transform)
        if resize is None:
            log.warning("decoded-image cache off: the validation transform has no Resize")
            return None
        stamps = {path: stamp(path) for path in files}  # before decoding: later changes show
        cache = DecodedCache(self.cache_dir / "decoded", resize, threads=self.num_workers)
        try:
            decoded = cache.load(files, keep_bad=self.bad_files.skip)
        except BadImages as err:
            return err.files
        if decoded is None:
            return None
        self._serve_decoded = functools.partial(serve_decoded, decoded=decoded, files=files,
                                                stamps=stamps, cache=cache)
        return [BadFile(files[row], reason) for row, reason in decoded.bad.items()]
