"""Decoded-image cache: each image file is decoded and resized once, not once per epoch and trial.

Every image of an image-folder dataset is decoded to RGB and resized with the validation
transform's own ``Resize`` (short side ``floor(input_size / crop_pct)``, the backbone's
interpolation, antialiased), then stored as uint8 pixels. Images whose short side is already
at or below that size are stored as decoded (never upscaled: the transforms upscale them as
before, and the cache stays small). So:

* validation tensors are bit-identical to decoding the file, since the validation ``Resize``
  of a cached image is a no-op, and so are training tensors of policies that start with that
  same resize (``augment=none``, ``heavy``);
* a random resized crop (``light``, ``randaugment``, ``trivialaugment``) cuts from the
  pre-resized image, as ImageNet training from 256-px copies does: a crop of half the area
  is upsampled 1.2-1.4x to the input size instead of downsampled from the full photo.

A dataset's images live in ``<cache_dir>/decoded/<key>/``: ``pixels.u8`` (all images, flat),
``index.npy`` (offset, height, width per image) and ``meta.json``. The key hashes the sorted
files' identities (resolved path, size, mtime_ns), the resize's size and interpolation, and
the Pillow and torchvision versions that resize, so a changed, added or removed file, another
backbone or ``data.image_size`` makes another entry. Old entries stay: delete
``<cache_dir>/decoded`` when no trial runs to reclaim the space. Entries are built in a
temporary folder and renamed into place, so concurrent trials never read a half-written one;
an entry that fails its structural checks (sizes, offsets) is rebuilt; pixel contents are not
checksummed. Where the cache cannot be written, images are decoded as they are loaded.

Building an entry is also the check for bad files (:mod:`data_modules.bad_files`): every
file is decoded fully, a file that fails is recorded in ``meta.json`` with the reason and gets
an empty row, and the build goes on, so one pass finds them all. An entry with bad files is
kept only for a dataset that skips them (``data.skip_bad_files``); the next trial on the same
files then reads the verdicts with the pixels, decoding nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torchvision
from PIL import Image
from torchvision.transforms import v2 as T

from data_modules import images
from data_modules.bad_files import BadFile, BadImages, read_image, verdict
from data_modules.cache_dir import discard_entry, publish, staging_folder
from data_modules.datamodules import ImageDataset
from data_modules.transforms import leaves

log = logging.getLogger(__name__)

#: Bumped when the entry layout or the resizing changes: old entries are then ignored.
FORMAT = 2
PIXELS, INDEX, META = "pixels.u8", "index.npy", "meta.json"


class DecodedImages:
    """The images of one cache entry: uint8 H x W x 3 arrays from one memory-mapped file.

    The map is opened on first access in each process; pickling (DataLoader workers started
    by spawn or forkserver) carries the folder and the small index, never the pixels.
    ``bad`` maps the rows of files that did not decode (no pixels) to the reason.
    """

    def __init__(self, folder: Path, index: np.ndarray, bad: dict[int, str] | None = None) -> None:
        self.folder = folder
        self.index = index
        self.bad = dict(bad or {})
        self._pixels: np.memmap | None = None

    @classmethod
    def open(cls, folder: Path, count: int) -> DecodedImages:
        """Open an entry of ``count`` images; ValueError (or OSError) when it is damaged."""
        meta = json.loads((folder / META).read_text())
        index = np.load(folder / INDEX, allow_pickle=False)
        if meta.get("format") != FORMAT or meta.get("count") != count:
            raise ValueError(f"meta.json {meta} is not format {FORMAT} of {count} images")
        if index.shape != (count, 3) or index.dtype != np.int64:
            raise ValueError(f"index of shape {index.shape}, {index.dtype}; want ({count}, 3)")
        bad = {int(row): str(reason) for row, reason in meta.get("bad", {}).items()}
        sizes = index[:, 1] * index[:, 2] * 3
        ends = np.cumsum(sizes)
        empty = np.zeros(count, dtype=bool)
        empty[list(bad)] = True
        if ((sizes > 0) == empty).any() or (index[:, 0] != ends - sizes).any():
            raise ValueError("index offsets do not follow the image sizes")
        on_disk = (folder / PIXELS).stat().st_size
        if on_disk != int(ends[-1]):
            raise ValueError(f"{PIXELS} holds {on_disk} bytes; the index needs {int(ends[-1])}")
        return cls(folder, index, bad)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / PIXELS, dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.index[row])
        return self._pixels[offset:offset + height * width * 3].reshape(height, width, 3)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}


class CachedImageDataset(ImageDataset):
    """An :class:`ImageDataset` of files that serves their cached, pre-resized pixels.

    Each access compares the file's size and mtime with those it had before the cache was
    built (one ``stat``): a file changed since is decoded and resized again, so the dataset
    never serves pixels that decoding the file now would not give; one that no longer decodes
    fails the trial naming it. A deleted file is served from the cache.
    """

    def __init__(self, dataset: ImageDataset, decoded: DecodedImages, rows: Sequence[int],
                 stamps: Sequence[tuple[int, int]], decode: Callable[[Path], np.ndarray]) -> None:
        super().__init__(dataset.items, dataset.targets.numpy(), dataset.transform)
        self.paths = [item for item in self.items if isinstance(item, Path)]
        if len(self.paths) != len(self.items):
            raise ValueError("a decoded-image cache serves datasets of files only")
        self.decoded = decoded
        self.rows = np.asarray(rows, dtype=np.int64)
        self.stamps = list(stamps)
        self.decode = decode

    def image(self, index: int) -> Image.Image:
        """The RGB image as cached: resized to the pre-crop size (see the module docstring)."""
        path = self.paths[index]
        try:
            changed = stamp(path) != self.stamps[index]
        except OSError:  # deleted, or unreachable: the cached pixels are all that is needed
            changed = False
        if changed:  # since the cache was built
            return Image.fromarray(read_image(path, self.decode))
        return Image.fromarray(self.decoded[int(self.rows[index])])


def stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file: what changes when it is rewritten."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def validation_resize(transform: Any) -> T.Resize | None:
    """The ``Resize`` of a validation pipeline (the first one, nested ones included), or None."""
    return next((step for step in leaves(transform) if isinstance(step, T.Resize)), None)


class DecodedCache:
    """Builds and opens decoded-image entries under ``root`` (``<cache_dir>/decoded``).

    Args:
        root: the folder of entries.
        resize: the validation transform's ``Resize``, applied to images larger than it.
        threads: decoding threads while building (Pillow releases the GIL while decoding).
    """

    def __init__(self, root: Path, resize: T.Resize, threads: int = 1) -> None:
        if resize.max_size is not None or len(resize.size or []) != 1:
            raise ValueError(f"{resize} must resize the short side to one size")
        self.root = root
        self.resize = resize
        self.short_side = int(resize.size[0])
        self.threads = max(1, threads)

    def key(self, files: Sequence[Path]) -> str:
        """The entry of ``files`` (in this order) at this resize."""
        digest = hashlib.sha1(f"{FORMAT}|{self.short_side}|{self.resize.interpolation.value}|"
                              f"{self.resize.antialias}|Pillow {PIL.__version__}|"
                              f"torchvision {torchvision.__version__}".encode())
        for path in files:
            digest.update(f"\n{images.image_identity(path)}".encode())
        return digest.hexdigest()

    def load(self, files: Sequence[Path], keep_bad: bool = False) -> DecodedImages | None:
        """The decoded images of ``files`` (row i is ``files[i]``), built if missing or damaged.

        Args:
            files: the image files, in the entry's row order.
            keep_bad: keep an entry where some files do not decode (their rows are listed in
                its ``bad``); otherwise such an entry is not kept and :class:`BadImages`
                names every file that failed.

        Returns None (after a warning) where the cache folder cannot be written.
        """
        if not files:
            return None
        started = time.perf_counter()
        folder = self.root / self.key(files)
        decoded = self._open(folder, len(files))
        if decoded is None:
            try:
                bad = self._build(folder, files, keep_bad)
                if bad and not keep_bad:
                    raise BadImages(bad)
                decoded = DecodedImages.open(folder, len(files))
            except (OSError, ValueError) as err:
                log.warning("decoded-image cache not written to %s (%s): decoding each image "
                            "as it is loaded", folder, err)
                return None
            log.info("decoded-image cache: decoded and resized %d images (short side <= %d px, "
                     "%.0f MB) in %.1f s into %s", len(files), self.short_side,
                     (folder / PIXELS).stat().st_size / 1e6, time.perf_counter() - started,
                     folder)
        else:
            log.info("decoded-image cache: %d images from %s in %.2f s", len(files), folder,
                     time.perf_counter() - started)
        if decoded.bad and not keep_bad:  # an entry a run that skips bad files kept
            raise BadImages([BadFile(files[row], why) for row, why in decoded.bad.items()])
        return decoded

    def _open(self, folder: Path, count: int) -> DecodedImages | None:
        """The entry in ``folder``, or None where there is none (a damaged one is removed)."""
        if not folder.exists():
            return None
        try:
            return DecodedImages.open(folder, count)
        except Exception as err:  # noqa: BLE001 -- a damaged entry of any kind is rebuilt
            log.warning("rebuilding damaged decoded-image cache %s (%s)", folder, err)
            discard_entry(folder)
            return None

    def decode(self, path: Path) -> np.ndarray:
        """One file as cached: RGB, short side at most the resize size, uint8 H x W x 3.

        Raises what Pillow raises on a file that does not decode.
        """
        image = images.load_rgb(path)
        if min(image.size) > self.short_side:
            image = self.resize(image)
        return np.asarray(image, dtype=np.uint8)

    def _decode_or_problem(self, path: Path) -> np.ndarray | str:
        try:
            return self.decode(path)
        except Exception as err:  # noqa: BLE001 -- Pillow raises many kinds on a bad file
            return verdict(path, err)  # the machine's errors are raised, never kept

    def _build(self, folder: Path, files: Sequence[Path], keep_bad: bool = False) -> list[BadFile]:
        """Decode ``files`` into the entry ``folder``; the files that did not decode.

        The entry is published when all decode, or when ``keep_bad``.
        """
        bad: dict[int, str] = {}
        with staging_folder(folder) as staging:
            index = np.zeros((len(files), 3), dtype=np.int64)
            offset = 0
            pool = ThreadPoolExecutor(self.threads)
            try:
                with (staging / PIXELS).open("wb") as out:
                    for row, pixels in enumerate(pool.map(self._decode_or_problem, files)):
                        if isinstance(pixels, str):
                            bad[row] = pixels
                            index[row] = (offset, 0, 0)
                            continue
                        out.write(pixels.tobytes())
                        index[row] = (offset, *pixels.shape[:2])
                        offset += pixels.nbytes
            finally:
                pool.shutdown(cancel_futures=True)  # a write error stops the build at once
            np.save(staging / INDEX, index)
            (staging / META).write_text(json.dumps({
                "format": FORMAT, "count": len(files), "short_side": self.short_side,
                "interpolation": self.resize.interpolation.value, "bytes": offset,
                "bad": {str(row): reason for row, reason in bad.items()}}))
            if keep_bad or not bad:
                publish(staging, folder)
        return [BadFile(files[row], reason) for row, reason in bad.items()]


def serve_decoded(datasets: Sequence[ImageDataset], decoded: DecodedImages,
                  files: Sequence[Path], stamps: dict[Path, tuple[int, int]],
                  cache: DecodedCache) -> list[ImageDataset]:
    """The datasets, served from one decoded-image entry of ``files`` holding all theirs.

    One entry per set of files (not per split), so another seed or ``val_fraction`` reuses it.
    ``stamps`` are the files' :func:`stamp` from before the entry was built or opened. Datasets
    of in-memory arrays are returned as given.
    """
    row = {path: i for i, path in enumerate(files)}
    served: list[ImageDataset] = []
    for dataset in datasets:
        paths = [item for item in dataset.items if isinstance(item, Path)]
        if len(paths) != len(dataset):
            served.append(dataset)
            continue
        served.append(CachedImageDataset(dataset, decoded, [row[path] for path in paths],
                                         [stamps[path] for path in paths], cache.decode))
    return served
