"""Image sources for caching: a folder (recursive), a CSV index, or the built-in synthetic world.

A source is an ordered list of :class:`ImageItem`; the order is deterministic (sorted paths, or the CSV's
row order) so an interrupted cache resumes on the same images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sae_vit.core.errors import SaeVitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_PATH_COLUMNS = ("path", "img_filename", "filename", "image", "file")


@dataclass(frozen=True)
class ImageItem:
    """One image of a source: a file on disk, or a loader (for the synthetic world)."""

    id: str
    """Stable identifier (relative path, or ``world:<task>/<split>/<i>``)."""
    path: Path | None = None
    load: Callable | None = None
    """Zero-argument function returning a PIL image, for images that are not files."""

    def open(self):
        """The image as an RGB PIL image; raises OSError (or ValueError) if it cannot be decoded."""
        from PIL import Image

        if self.load is not None:
            return self.load().convert("RGB")
        with Image.open(self.path) as im:
            return im.convert("RGB")


@dataclass(frozen=True)
class ImageSource:
    """An ordered list of images with a fingerprint that identifies the list."""

    kind: str
    """``folder``, ``csv`` or ``world``."""
    location: str
    items: Sequence[ImageItem]

    def fingerprint(self) -> str:
        """sha256 over the ordered ids (and file sizes), so a resumed cache can tell the source changed."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(item.id.encode())
            if item.path is not None:
                try:
                    h.update(str(item.path.stat().st_size).encode())
                except OSError:
                    h.update(b"?")
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "n_images": len(self.items),
                "fingerprint": self.fingerprint()}


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
    """A torch-style dataset over a source: returns ``(index, tensor)`` or ``(index, None)`` if unreadable."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable, offset: int = 0):
        self.items, self.transform, self.offset = items, transform, offset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            image = self.items[i].open()
        except (OSError, ValueError, SyntaxError):
            return self.offset + i, None
        return self.offset + i, self.transform(image)


def collate_skip_unreadable(batch):
    """Stack readable images; return ``(indices, tensor or None, unreadable indices)``."""
    import torch

    good = [(i, t) for i, t in batch if t is not None]
    bad = [i for i, t in batch if t is None]
    if not good:
        return [], None, bad
    return [i for i, _ in good], torch.stack([t for _, t in good]), bad
