"""Decoding user images into the RGB the backbones expect."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

#: File suffixes read as images (lower case), as torchvision's ImageFolder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparent pixels (alpha channels, and the single transparent color of palette, RGB or
    grayscale PNGs) are composited onto white: a plain ``convert("RGB")`` exposes whatever
    color they happen to store, often black. 16-bit grayscale is scaled by its bit depth
    (65535 -> 255), the same for every image; float images by their own range.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(values.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file fully into RGB (the file handle is closed on return)."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def image_identity(item: np.ndarray | Path) -> str:
    """What anything computed from an image depends on, cheaply: a file's resolved path, size
    and modification time, or an in-memory image's shape and pixels (cache keys)."""
    if isinstance(item, Path):
        stat = item.stat()
        return f"{item.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha1(repr(item.shape).encode())
    digest.update(np.ascontiguousarray(item).tobytes())
    return digest.hexdigest()


def decode(item: np.ndarray | Path) -> Image.Image:
    """An image file or a uint8 array (H x W or H x W x 3) as an RGB image."""
    if isinstance(item, Path):
        return load_rgb(item)
    return Image.fromarray(item).convert("RGB")
