"""Where a command's images come from: ``--images`` (a folder or CSV) or ``--world`` (the synthetic world)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from sae_vit.core.errors import SaeVitError
from sae_vit.io.images import ImageItem, ImageSource, csv_source, folder_source
from sae_vit.world import scenes as world


def world_source(task: str = "shapes", split: str = "train", n: int = 2048, seed: int = 0) -> ImageSource:
    """Images of the built-in synthetic world (rendered on demand, deterministic from the seed)."""
    scenes, rows = world.task_scenes(task, split, n, seed)
    items = [ImageItem(id=f"world:{row['id']}", load=partial(world.render, scene))
             for row, scene in zip(rows, scenes, strict=True)]
    return ImageSource("world", f"{task}/{split}/n={n}/seed={seed}", items)


def open_source(images: str | os.PathLike | None, world_task: str | None = None, n: int = 2048,
                seed: int = 0, split: str = "train") -> ImageSource:
    """Resolve the ``--images`` / ``--world`` arguments of a command into an :class:`ImageSource`; the world's
    ``split`` is ``train`` for caching (SAE training data) and ``val`` for probe images."""
    if images is not None and world_task is not None:
        raise SaeVitError("Pass either --images or --world, not both.")
    if images is None:
        return world_source(world_task or "shapes", split, n, seed)
    p = Path(images)
    if p.suffix.lower() == ".csv":
        return csv_source(p)
    return folder_source(p)
