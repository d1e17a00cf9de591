"""Image sources for caching: a folder (recursive), a CSV index, or the built-in synthetic world.

A source is an ordered list of :class:`ImageItem`; the order is deterministic (sorted paths, or the CSV's
row order) so an interrupted cache resumes on the same images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sae_vit.core.errors import SaeVitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_PATH_COLUMNS = ("path", "img_filename", "filename", "image", "file")
#: The fingerprint reads this many bytes from the start and from the end of every image file.
FINGERPRINT_BYTES = 8192
#: Transparent pixels are composited over this colour (white, as a page or a viewer shows them).
BACKGROUND = (255, 255, 255)


class UnreadableImage(OSError):
    """An image file that cannot be decoded (broken, truncated, a decompression bomb); ``str()`` is the reason.
    An OSError, so code that skips unreadable files by catching OSError skips these too."""


def to_rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode, converted by its meaning rather than by truncation:

    - 16-bit and 32-bit integer greyscale (``I;16*``, ``I``): the 16-bit range 0..65535 scaled to 0..255;
    - float greyscale (``F``): values in [0, 1] scaled to 0..255, anything else clipped to 0..255 (NaN -> 0);
    - images with transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparency key):
      composited over :data:`BACKGROUND`;
    - everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...): Pillow's own conversion.
    """
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.copy()
    if mode.startswith("I"):
        a = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageItem:
    """One image of a source: a file on disk, or a loader (for the synthetic world)."""

    id: str
    """Stable identifier (relative path, or ``world:<task>/<split>/<i>``)."""
    path: Path | None = None
    load: Callable | None = None
    """Zero-argument function returning a PIL image, for images that are not files."""

    def open(self):
        """The image as an 8-bit RGB PIL image (:func:`to_rgb`); raises :class:`UnreadableImage` with the reason
        when the file cannot be decoded (missing, broken, truncated, or a decompression bomb)."""
        from PIL import Image

        if self.load is not None:
            return to_rgb(self.load())
        try:
            with Image.open(self.path) as im:
                im.load()
                return to_rgb(im)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file; all mean "skip it"
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise UnreadableImage(f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__) from exc


@dataclass(frozen=True)
class ImageSource:
    """An ordered list of images with a fingerprint that identifies the list."""

    kind: str
    """``folder``, ``csv`` or ``world``."""
    location: str
    items: Sequence[ImageItem]
    _fingerprint: list = field(default_factory=list, compare=False, repr=False)

    def fingerprint(self) -> str:
        """sha256 over the ordered ids and each file's size and content (its first and last
        :data:`FINGERPRINT_BYTES`), so a resumed cache can tell the source changed, even when an image was
        replaced by another of the same size. Computed once per source."""
        if self._fingerprint:
            return self._fingerprint[0]
        h = hashlib.sha256()
        for item in self.items:
            h.update(item.id.encode() + b"\0")
            if item.path is not None:
                h.update(_content_stamp(item.path))
        self._fingerprint.append(h.hexdigest()[:16])
        return self._fingerprint[0]

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "n_images": len(self.items),
                "fingerprint": self.fingerprint()}


def _content_stamp(path: Path) -> bytes:
    """Size, first and last :data:`FINGERPRINT_BYTES` of a file (``?`` when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(FINGERPRINT_BYTES)
            if size > 2 * FINGERPRINT_BYTES:
                fh.seek(size - FINGERPRINT_BYTES)
            tail = fh.read(FINGERPRINT_BYTES)
    except OSError:
        return b"?\0"
    return f"{size}:".encode() + hashlib.sha256(head + b"|" + tail).digest()


def folder_source(root: str | os.PathLike) -> ImageSource:
    """All images under ``root`` (recursive, sorted by relative path)."""
    root = Path(root)
    if not root.exists():
        raise SaeVitError(f"Image folder {root} does not exist; pass --images with a folder of images or a CSV.")
    if not root.is_dir():
        raise SaeVitError(f"{root} is not a folder; pass a folder of images or a .csv index to --images.")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise SaeVitError(
            f"No images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}); point --images at a folder "
            "that holds images."
        )
    items = [ImageItem(id=p.relative_to(root).as_posix(), path=p) for p in paths]
    return ImageSource("folder", str(root), items)


def csv_source(csv_path: str | os.PathLike, column: str | None = None) -> ImageSource:
    """Images listed in a CSV (column ``path``, or Waterbirds' ``img_filename``), relative to the CSV's folder."""
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SaeVitError(f"CSV index {csv_path} does not exist; check the --images path.")
    try:
        df = pd.read_csv(csv_path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise SaeVitError(f"Could not parse {csv_path} as CSV ({type(exc).__name__}); check the file.") from exc
    col = column or next((c for c in CSV_PATH_COLUMNS if c in df.columns), None)
    if col is None or col not in df.columns:
        raise SaeVitError(
            f"{csv_path} has no image path column (expected one of {', '.join(CSV_PATH_COLUMNS)}); "
            "add a 'path' column."
        )
    if df.empty:
        raise SaeVitError(f"{csv_path} lists no images; add rows with image paths.")
    # an absolute path stays itself under ``/`` (pathlib drops the folder before it)
    items = [ImageItem(id=rel, path=csv_path.parent / rel) for rel in df[col].astype(str)]
    return ImageSource("csv", str(csv_path), items)


class ImageDataset:
    """A torch-style dataset over a source: returns ``(index, tensor, None)``, or ``(index, None, reason)`` for an
    unreadable image."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable, offset: int = 0):
        self.items, self.transform, self.offset = items, transform, offset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            image = self.items[i].open()
        except UnreadableImage as exc:
            return self.offset + i, None, str(exc)
        return self.offset + i, self.transform(image), None


def collate_skip_unreadable(batch):
    """Stack readable images; return ``(indices, tensor or None, {unreadable index: reason})``."""
    import torch

    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = {i: reason for i, t, reason in batch if t is None}
    if not good:
        return [], None, bad
    return [i for i, _ in good], torch.stack([t for _, t in good]), bad
