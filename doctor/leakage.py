"""Train/val leakage: the same image, or a near copy of it, on both sides of the split.

Each image is fingerprinted twice from its decoded pixels (never from file bytes, so a PNG
and a JPEG of the same picture still match exactly when their pixels agree):

* an exact hash: SHA-1 of the RGB pixels and the image size;
* a perceptual hash (pHash): the signs of the 8x8 lowest frequencies of the 2-D DCT of a
  32x32 grayscale thumbnail, against their median. Re-encoding, resizing and small changes
  of brightness or contrast move few of its 64 bits; different pictures differ in ~32.

Fingerprints are computed once per dataset and cached on disk under
``<cache_dir>/fingerprints/``, keyed by the images' identities (a file's path, size and
modification time; an in-memory image's pixels), so trials and sweeps on the same data skip
the decoding.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from PIL import Image

from doctor.findings import Finding

log = logging.getLogger(__name__)

#: How many example pairs a finding names.
EXAMPLES = 3
#: Pairs compared per block in the near-duplicate search (memory: 8 bytes each).
_BLOCK = 4_000_000


def exact_hash(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash of ``image`` (see the module docstring)."""
    thumb = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coefficients = scipy.fft.dctn(np.asarray(thumb, dtype=np.float64), norm="ortho")[:8, :8]
    flat = coefficients.flatten()
    bits = flat > np.median(flat[1:])  # the DC term only measures brightness
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@dataclass
class Fingerprints:
    """Exact and perceptual hashes of a list of images, in order."""

    exact: list[str]
    perceptual: np.ndarray  # uint64


class FingerprintCache:
    """Fingerprints of whole datasets on disk, one ``.npz`` per dataset.

    A dataset of files is keyed by the folder that holds them all, so adding, changing or
    removing a file re-hashes only that file (entries of files no longer listed are dropped);
    an in-memory dataset is keyed by its images' identities.

    Args:
        root: the cache folder (``<cache_dir>/fingerprints``); None keeps nothing on disk.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def fingerprints(self, ids: Sequence[str], decode: Callable[[int], Image.Image],
                     location: str | None = None) -> Fingerprints:
        """Fingerprints of the images with identities ``ids``; ``decode(i)`` loads image i.

        Args:
            location: the folder holding the dataset's files; None for in-memory images.
        """
        keyed_by = location if location is not None else "\n".join(sorted(ids))
        key = hashlib.sha1(keyed_by.encode()).hexdigest()
        cached = self._load(key)
        known = {name: cached[name] for name in ids if name in cached}
        missing = [i for i, name in enumerate(ids) if name not in known]
        for i in missing:
            image = decode(i)
            known[ids[i]] = (exact_hash(image), perceptual_hash(image))
        if missing or len(known) != len(cached):
            self._save(key, known)
        return Fingerprints([known[name][0] for name in ids],
                            np.asarray([known[name][1] for name in ids], dtype=np.uint64))

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{key}.npz"

    def _load(self, key: str) -> dict[str, tuple[str, int]]:
        path = self._path(key)
        if path is None or not path.is_file():
            return {}
        try:
            with np.load(path) as data:
                return {str(name): (str(exact), int(phash)) for name, exact, phash
                        in zip(data["ids"], data["exact"], data["perceptual"], strict=True)}
        except Exception as err:  # noqa: BLE001 -- a damaged cache of any kind is rebuilt
            log.warning("ignoring unreadable fingerprint cache %s (%s)", path, err)
            return {}

    def _save(self, key: str, known: dict[str, tuple[str, int]]) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # one per concurrent trial
            np.savez(tmp, ids=np.asarray(list(known)),
                     exact=np.asarray([v[0] for v in known.values()]),
                     perceptual=np.asarray([v[1] for v in known.values()], dtype=np.uint64))
            tmp.replace(path)  # readers never see a half-written file
        except OSError as err:
            log.warning("fingerprint cache not written to %s (%s)", path, err)


def nearest(val: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each validation hash, (Hamming distance to, index of) the closest training hash."""
    distance = np.full(len(val), 65, dtype=np.int64)
    index = np.zeros(len(val), dtype=np.int64)
    if not len(train):
        return distance, index
    rows = max(1, _BLOCK // len(train))
    for start in range(0, len(val), rows):
        block = np.bitwise_count(val[start:start + rows, None] ^ train[None, :])
        index[start:start + rows] = block.argmin(axis=1)
        distance[start:start + rows] = block.min(axis=1)
    return distance, index


def check_leakage(train: Fingerprints, val: Fingerprints, train_names: Sequence[str],
                  val_names: Sequence[str], max_distance: int) -> list[Finding]:
    """Exact and near duplicates across the split, with counts and example pairs.

    Args:
        max_distance: largest pHash Hamming distance (of 64 bits) that counts as a near copy.
    """
    findings = []
    train_exact = {h: i for i, h in enumerate(train.exact)}
    exact = [(v, train_exact[h]) for v, h in enumerate(val.exact) if h in train_exact]
    if exact:
        findings.append(Finding(
            "leakage", "warning",
            f"{len(exact)} of {len(val.exact)} validation images are pixel-identical to training "
            f"images (e.g. {_examples(exact, val_names, train_names)}): validation scores are "
            "inflated",
            "remove the copies from one split (or deduplicate the data before splitting)"))
    distance, index = nearest(val.perceptual, train.perceptual)
    copied = {v for v, _ in exact}
    near = [(int(v), int(index[v])) for v in np.flatnonzero(distance <= max_distance)
            if int(v) not in copied]
    if near:
        findings.append(Finding(
            "near_duplicates", "warning",
            f"{len(near)} of {len(val.exact)} validation images are near copies of training "
            f"images (perceptual hash within {max_distance} bits; e.g. "
            f"{_examples(near, val_names, train_names)})",
            "check them by eye; keep resized/re-encoded copies of one picture in a single "
            "split (doctor.preflight.near_duplicate_distance=-1 turns the check off)"))
    return findings


def _examples(pairs: list[tuple[int, int]], val_names: Sequence[str],
              train_names: Sequence[str]) -> str:
    return "; ".join(f"{val_names[v]} ~ {train_names[t]}" for v, t in pairs[:EXAMPLES])
