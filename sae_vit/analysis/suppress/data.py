"""The labelled datasets suppression reads: Waterbirds, CelebA or a CSV, each with a binary spurious attribute
and train / val / test splits, and their images one batch at a time."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sae_vit.core.errors import SaeVitError

TASKS = ("waterbirds", "celeba", "csv")


@dataclass
class TaskData:
    """A labelled dataset with a binary spurious attribute, in the readers' layout."""

    frame: object
    """pandas DataFrame: ``path``, ``label`` (int), ``spurious`` (0/1), ``split`` (train/val/test), ``group``."""
    classes: list[str]
    """Zero-shot class prompts, in label order (``a|b`` averages the prompts of several names)."""
    target: str
    spurious: str
    group_names: dict[int, str] = field(default_factory=dict)
    """Group id (``n_spurious · label + spurious``) → readable name."""


def _binary(values, column: str, source) -> tuple[object, list[str]]:
    uniq = sorted(values.dropna().unique().tolist(), key=str)
    if len(uniq) != 2:
        raise SaeVitError(f"Spurious column {column!r} of {source} has {len(uniq)} distinct values "
                          f"({uniq[:5]}); suppression needs a binary attribute, pick another --spurious.")
    if set(uniq) == {0, 1}:
        return values.astype(int), ["0", "1"]
    return values.map({uniq[0]: 0, uniq[1]: 1}).astype(int), [str(u) for u in uniq]


def read_task(data: str | os.PathLike, task: str, target: str | None = None, spurious: str | None = None,
              classes: Sequence[str] | None = None, model: str = "toy") -> TaskData:
    """Read a dataset with the real-layout readers of :mod:`sae_vit.datasets`.

    ``waterbirds``: target ``y`` (the label), spurious ``place``; ``celeba``: attributes (default Blond_Hair,
    spurious Male); ``csv``: a CSV file (or a folder holding ``metadata.csv``) with ``path``, the ``target``
    column, the ``spurious`` column and ``split``.
    """
    import pandas as pd

    from sae_vit.io import datasets
    from sae_vit.io.images import CSV_PATH_COLUMNS

    if task not in TASKS:
        raise SaeVitError(f"Unknown --task {task!r}; use one of: {', '.join(TASKS)}.")
    root = Path(data)
    if not root.exists():
        raise SaeVitError(f"Data path {root} does not exist; pass the dataset folder (or CSV) with --data.")
    spur_names = ["0", "1"]
    if task == "waterbirds":
        frame = datasets.read_waterbirds(root)
        if target not in (None, "y", "label"):
            raise SaeVitError(f"Waterbirds has one target, y (not {target!r}); drop --target or pass --target y.")
        spurious = spurious or "place"
        if spurious not in frame.columns:
            raise SaeVitError(f"Waterbirds metadata has no column {spurious!r}; use --spurious place.")
        target = "y"
        frame["spurious"] = frame[spurious].astype(int)
    elif task == "celeba":
        target, spurious = target or "Blond_Hair", spurious or "Male"
        frame = datasets.read_celeba(root, target, spurious)
    else:
        csv = root / "metadata.csv" if root.is_dir() else root
        if spurious is None:
            raise SaeVitError("--task csv needs --spurious COLUMN naming the binary spurious attribute.")
        target = target or "label"
        if not csv.is_file():
            raise SaeVitError(f"CSV index {csv} does not exist; pass --data with a CSV file or a folder holding "
                              "metadata.csv.")
        columns = pd.read_csv(csv, nrows=0).columns  # the image paths: ``path`` or another accepted column
        path_col = next((c for c in CSV_PATH_COLUMNS if c in columns), "path")
        frame = datasets.read_csv_labels(csv, label_col=target, group_cols=(spurious,), path_col=path_col,
                                         default_split="train")
        frame["spurious"], spur_names = _binary(frame[spurious], spurious, csv)
    frame = frame.reset_index(drop=True)
    for split in ("train", "val", "test"):
        if not (frame["split"] == split).any():
            raise SaeVitError(f"{root} has no {split} images; suppression needs train (ranking), val (selection) "
                              "and test (evaluation) splits.")
    if frame.loc[frame["split"] == "train", "spurious"].nunique() < 2:
        raise SaeVitError(f"The train split of {root} has only one value of {spurious!r}; features cannot be ranked "
                          "by association with it.")
    frame["group"] = 2 * frame["label"] + frame["spurious"]
    n_classes = int(frame["label"].max()) + 1
    has_names = "label_name" in frame.columns
    names = frame.drop_duplicates("label").set_index("label")["label_name"].to_dict() if has_names else {}
    label_names = [str(names.get(i, i)) for i in range(n_classes)]
    group_names = {2 * y + s: f"{target}={label_names[y]}, {spurious}={spur_names[s]}"
                   for y in range(n_classes) for s in (0, 1)}
    classes = default_classes(task, target, model, label_names) if classes is None else list(classes)
    if len(classes) != n_classes:
        raise SaeVitError(f"--classes gives {len(classes)} prompts but {target!r} has {n_classes} classes; "
                          "give one prompt per class, in label order.")
    return TaskData(frame, classes, target, spurious, group_names)


def default_classes(task: str, target: str, model: str, label_names: Sequence[str]) -> list[str]:
    """Zero-shot class prompts when ``--classes`` is not given."""
    toy = model == "toy"
    if task == "waterbirds":
        return ["car", "boat"] if toy else ["landbird", "waterbird"]
    if task == "celeba":
        if toy and target == "Yellow":
            return ["red|orange|green|blue|purple", "yellow"]
        if not toy and target == "Blond_Hair":
            return ["person with dark hair", "person with blond hair"]
        raise SaeVitError(f"No default zero-shot prompts for target {target!r}; pass --classes 'not x,x'.")
    if all(not n.isdigit() for n in label_names):
        return list(label_names)
    raise SaeVitError(f"The labels of {target!r} are numbers; pass --classes with one prompt per class.")


class ImageBatches:
    """Preprocessed images of a list of paths, loaded lazily one batch at a time."""

    def __init__(self, paths: Sequence[str], transform: Callable, batch_size: int):
        self.paths, self.transform, self.batch_size = list(paths), transform, batch_size

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        from PIL import Image

        for start in range(0, len(self.paths), self.batch_size):
            batch = []
            for p in self.paths[start:start + self.batch_size]:
                try:
                    with Image.open(p) as im:
                        batch.append(self.transform(im.convert("RGB")))
                except (OSError, ValueError, SyntaxError) as exc:
                    raise SaeVitError(f"Could not read image {p} ({type(exc).__name__}); fix or remove it "
                                      "from the dataset index.") from exc
            yield torch.stack(batch)


def split_tensors(frame, split: str) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """Image paths and the ``label``, ``spurious`` and ``group`` tensors [n] of one split of a task's frame."""
    part = frame[frame["split"] == split]
    return (part["path"].tolist(), torch.tensor(part["label"].values), torch.tensor(part["spurious"].values),
            torch.tensor(part["group"].values))
