"""Bad image files: found when an image folder is set up, before any training, then reported
or skipped (``data.skip_bad_files``); a file that goes bad later fails its trial, named.

A listed file is *bad* when it is empty, unreadable, not an image PIL can identify (a text
file named ``x.jpg``), truncated, or does not decode fully into RGB. Only a full decode finds
every truncated file (``Image.verify`` passes some truncated JPEGs), so the check is a full
decode: the one the decoded-image cache does anyway (:mod:`data_modules.decoded_cache`: no
second decode), or :func:`scan` where that cache is off. Either verdict is kept in
:class:`ScanRecords`, one record per set of files keyed by every file's path, size and mtime
(as the cache's entries are), so the next trial on the same files reads it instead of decoding
them again; a changed, added or removed file means a new full check. A stat before that
(:func:`unreadable`) finds empty and unreadable files, which are never recorded.

Large images keep PIL's decompression-bomb guard as it is: a warning above
``Image.MAX_IMAGE_PIXELS`` (89.5 megapixels by default) and an error above twice that. A
6000 x 4000 photo (24 MP), even a 150 MP panorama, loads; a file beyond ~179 MP is reported
bad with its size. Raising the limit would lift it for every PIL user in the process, and
such an image is over half a gigabyte of pixels at each decode (each epoch without the cache).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import PIL
from PIL import Image, UnidentifiedImageError

from data_modules import images
from errors import PlateauError, one_line

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bad files named in a message; the rest are counted.
SHOWN = 3


@dataclass(frozen=True)
class BadFile:
    """An image file that cannot be used, and why (``zero bytes``, ``truncated``, ...)."""

    path: Path
    reason: str


class BadImages(Exception):
    """Files that failed to decode where every file had to (see ``DecodedCache.load``)."""

    def __init__(self, files: Sequence[BadFile]) -> None:
        super().__init__(f"{len(files)} file(s) cannot be decoded")
        self.files = list(files)


class UnreadableImageError(PlateauError):
    """A file that passed the scan at setup but cannot be read during training."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error reaches the training process as ``type(err)(text)``,
        # text being "Caught <type> in DataLoader worker process N." and the worker's
        # traceback, whose last line ends in the message: keep that line and where it was.
        lines = message.strip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught "):
            where = lines[0].partition(" in ")[2].rstrip(".")
            message = f"{lines[-1].partition(': ')[2]} (in {where})"
        super().__init__(message)


#: ``errno`` values that say nothing about the file: the disk, the network filesystem or the
#: machine failed for a moment (EIO on NFS, a stale handle, a time-out, no memory).
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EINTR, errno.ENOMEM,
                              errno.ETIMEDOUT, errno.ESTALE, errno.ENOLINK, errno.ECOMM,
                              errno.ECONNRESET, errno.ENETDOWN, errno.EHOSTDOWN})


class TransientReadError(PlateauError):
    """A file that could not be read for a reason that is not the file's: never a verdict."""


def verdict(path: Path, err: BaseException) -> str:
    """Why ``path`` is bad, from the error reading it raised (:func:`problem`); raises
    :class:`TransientReadError` instead when the error is the machine's, not the file's (a
    ``MemoryError``, a transient :data:`TRANSIENT_ERRNOS` error): recorded as a bad file,
    it would drop a good image from every later run."""
    if isinstance(err, MemoryError) or (isinstance(err, OSError)
                                        and err.errno in TRANSIENT_ERRNOS):
        raise TransientReadError(
            f"image {path} could not be read ({type(err).__name__}: {one_line(err, 200)}): "
            "the disk, filesystem or memory failed, not the file; nothing was recorded "
            "about it: run again") from err
    return problem(err)


def problem(err: BaseException) -> str:
    """Why a file failed to decode, in a few words, from the error PIL (or the OS) raised."""
    if isinstance(err, Image.DecompressionBombError):
        return f"too large for PIL ({one_line(err, 200)})"
    if isinstance(err, UnidentifiedImageError):
        return "not an image"
    if isinstance(err, FileNotFoundError):
        return "deleted"
    if isinstance(err, OSError) and err.strerror:
        return f"unreadable ({err.strerror})"
    text = one_line(err, 200)
    if "truncated" in text.lower():
        return "truncated"
    return f"does not decode ({type(err).__name__}: {text})"


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read at all (a ``stat``, no open): zero bytes, gone, no read
    permission; None when it can be. Not recorded: a ``chmod`` does not change the mtime."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return verdict(path, err)
    if size == 0:
        return "zero bytes"
    if not os.access(path, os.R_OK):
        return "unreadable (no read permission)"
    return None


def decode_problem(path: Path) -> str | None:
    """Why ``path`` does not decode fully into RGB, or None when it does (a full decode)."""
    try:
        with Image.open(path) as image:
            image.load()
            images.to_rgb(image)
    except Exception as err:  # noqa: BLE001 -- Pillow raises many kinds on a bad file
        return verdict(path, err)
    return None


def scan(files: Sequence[Path], threads: int = 1) -> list[BadFile]:
    """The files that do not decode, by decoding each one (Pillow releases the GIL)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        verdicts = list(pool.map(decode_problem, files))
    return [BadFile(path, reason) for path, reason in zip(files, verdicts, strict=True) if reason]


def read_image(path: Path, decode: Callable[[Path], T]) -> T:
    """``decode(path)`` of a file that passed the scan at setup; a failure is raised as an
    :class:`UnreadableImageError` naming the file instead of Pillow's bare message."""
    try:
        return decode(path)
    except Exception as err:  # noqa: BLE001 -- Pillow raises many kinds on a bad file
        raise UnreadableImageError(
            f"image {path} could not be read during training (deleted or changed since the "
            f"scan at setup): {problem(err)}; restore or remove it and run again") from err


class ScanRecords:
    """Verdicts of full scans, one small JSON file per set of files in ``root``
    (``<cache_dir>/scans``); any file's change of path, size or mtime makes another key.

    Unwritable or damaged records are ignored: the files are scanned again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, files: Sequence[Path]) -> Path:
        digest = hashlib.sha1(f"scan 1|Pillow {PIL.__version__}".encode())
        for path in sorted(files, key=str):
            digest.update(f"\n{images.image_identity(path)}".encode())
        return self.root / f"{digest.hexdigest()}.json"

    def get(self, files: Sequence[Path]) -> list[BadFile] | None:
        """The bad files among ``files`` as last scanned, or None if these were not."""
        try:
            record = json.loads(self._file(files).read_text())
            return [BadFile(Path(path), str(reason)) for path, reason in record["bad"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, files: Sequence[Path], bad: Sequence[BadFile]) -> None:
        """Remember the verdict of a full scan of ``files`` (in one step: no half record)."""
        target = self._file(files)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".scan.")
            with os.fdopen(handle, "w") as out:
                json.dump({"bad": [[str(b.path), b.reason] for b in bad]}, out)
            os.replace(staging, target)
        except OSError as err:
            log.debug("scan verdict not recorded in %s (%s)", target.parent, err)


class BadFilePolicy:
    """What bad files do to a dataset: stop before training (default), or be left out.

    Args:
        skip: ``data.skip_bad_files``: train without the bad files, after one warning.
    """

    def __init__(self, skip: bool = False) -> None:
        self.skip = skip

    def apply(self, bad: Sequence[BadFile], root: Path, total: int) -> set[Path]:
        """The files to leave out of the ``total`` files under ``root``; a
        :class:`PlateauError` naming the first few bad files unless skipping them."""
        if not bad:
            return set()
        shown = ", ".join(f"{_relative(b.path, root)} ({b.reason})" for b in bad[:SHOWN])
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        if not self.skip:
            raise PlateauError(
                f"cannot decode image files under {root}: {len(bad)} of {total} are bad: "
                f"{shown}{more}; remove or repair them, or set data.skip_bad_files=true to "
                "train without them")
        log.warning("skipping %d bad image file(s) of %d under %s (data.skip_bad_files=true): "
                    "%s%s", len(bad), total, root, shown, more)
        return {b.path for b in bad}


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
