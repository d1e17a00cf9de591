"""Readers for labelled image datasets: Waterbirds, CelebA, typographic-attack sets and generic CSVs.

Every reader returns a pandas DataFrame with at least ``path`` (absolute), ``label`` (int) and ``split``
('train' / 'val' / 'test'), plus the dataset's group or attribute columns. The world's exports
(:func:`sae_vit.world.export_task`) use the same layouts, so one code path serves real and synthetic data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sae_vit.core.errors import SaeVitError

_SPLIT_ALIASES = {"0": "train", "1": "val", "2": "test", "train": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise SaeVitError(f"{what} not found at {path}; {fix}.")
    return path


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], source: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        columns = ", ".join(map(str, frame.columns))
        raise SaeVitError(f"{source} has no column {missing[0]!r} (columns: {columns}); pass the right "
                          "column name or fix the file.")


def _normalise_split(values: pd.Series, source: Path) -> pd.Series:
    out = values.astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
    if out.isna().any():
        bad = values[out.isna()].iloc[0]
        raise SaeVitError(f"{source} has split value {bad!r}; use 0/1/2 or train/val/test.")
    return out


def read_waterbirds(directory: str | os.PathLike) -> pd.DataFrame:
    """Waterbirds (``metadata.csv``: img_id, img_filename, y, split, place[, place_filename]).

    Columns: ``path``, ``label`` (= y, 1 = waterbird), ``split``, ``place`` (1 = water), ``group`` (2·y + place).
    """
    root = Path(directory).expanduser().resolve()
    meta = _require_file(root / "metadata.csv", "Waterbirds metadata.csv",
                         "pass the folder that holds metadata.csv (e.g. waterbird_complete95_forest2water2)")
    frame = pd.read_csv(meta)
    _require_columns(frame, ["img_filename", "y", "split", "place"], meta)
    out = pd.DataFrame({"path": [str(root / f) for f in frame["img_filename"]],
                        "label": frame["y"].astype(int), "split": _normalise_split(frame["split"], meta),
                        "place": frame["place"].astype(int)})
    out["group"] = 2 * out["label"] + out["place"]
    for col in ("img_id", "place_filename"):
        if col in frame.columns:
            out[col] = frame[col]
    return out


def _celeba_image_dir(root: Path) -> Path:
    for candidate in (root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba"):
        if candidate.is_dir():
            return candidate
    raise SaeVitError(f"No img_align_celeba/ folder in {root}; pass the CelebA folder that holds it.")


def _read_celeba_attributes(root: Path) -> pd.DataFrame:
    txt, csv = root / "list_attr_celeba.txt", root / "list_attr_celeba.csv"
    if txt.is_file():
        with open(txt) as f:
            f.readline()  # the image count
            header = f.readline().split()
            rows = [line.split() for line in f if line.strip()]
        # the header has no name for the first (file name) column
        frame = pd.DataFrame(rows, columns=["image_id", *header])
        for col in header:
            frame[col] = frame[col].astype(int)
        return frame
    if csv.is_file():
        frame = pd.read_csv(csv)
        _require_columns(frame, ["image_id"], csv)
        return frame
    raise SaeVitError(f"No list_attr_celeba.txt or list_attr_celeba.csv in {root}; pass the CelebA folder.")


def _read_celeba_partition(root: Path) -> pd.DataFrame:
    txt, csv = root / "list_eval_partition.txt", root / "list_eval_partition.csv"
    if txt.is_file():
        frame = pd.read_csv(txt, sep=r"\s+", header=None, names=["image_id", "partition"])
    elif csv.is_file():
        frame = pd.read_csv(csv)
        _require_columns(frame, ["image_id", "partition"], csv)
    else:
        raise SaeVitError(f"No list_eval_partition.txt or .csv in {root}; pass the CelebA folder.")
    return frame


def read_celeba(directory: str | os.PathLike, target: str = "Blond_Hair", spurious: str = "Male"
                ) -> pd.DataFrame:
    """CelebA (``list_attr_celeba.txt`` or Kaggle's ``.csv``, ``list_eval_partition``, ``img_align_celeba/``).

    Columns: ``path``, ``label`` (target attribute as 0/1), ``split``, ``spurious`` (0/1), ``group``
    (2·label + spurious), ``image_id`` and every attribute as 0/1.
    """
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise SaeVitError(f"CelebA folder {root} does not exist; pass the folder holding "
                          "list_attr_celeba.txt.")
    attrs = _read_celeba_attributes(root)
    source = root / "list_attr_celeba"
    for name in (target, spurious):
        if name not in attrs.columns:
            names = ", ".join(c for c in attrs.columns if c != "image_id")
            raise SaeVitError(f"{source} has no attribute {name!r}; choose one of: {names}.")
    parts = _read_celeba_partition(root)
    frame = attrs.merge(parts, on="image_id", how="inner")
    if len(frame) < len(attrs):
        raise SaeVitError(f"{len(attrs) - len(frame)} images of {source} have no partition; check that "
                          "list_eval_partition lists every image.")
    images = _celeba_image_dir(root)
    attr_cols = [c for c in attrs.columns if c != "image_id"]
    out = pd.DataFrame({"path": [str(images / f) for f in frame["image_id"]],
                        "label": (frame[target] > 0).astype(int),
                        "split": _normalise_split(frame["partition"], root / "list_eval_partition"),
                        "spurious": (frame[spurious] > 0).astype(int), "image_id": frame["image_id"]})
    out["group"] = 2 * out["label"] + out["spurious"]
    for col in attr_cols:
        out[col] = (frame[col] > 0).astype(int)
    return out


def read_csv_labels(csv: str | os.PathLike, label_col: str = "label", group_cols: Sequence[str] = (),
                    path_col: str = "path", default_split: str = "test") -> pd.DataFrame:
    """A generic CSV index: ``path`` (relative to the CSV's folder or absolute), a label column, optional
    group columns and an optional ``split`` column (0/1/2 or names; ``default_split`` when absent).

    String labels become ints in sorted order, the names kept in ``label_name``.
    """
    source = Path(csv).expanduser().resolve()
    _require_file(source, "Label CSV", "check the path")
    frame = pd.read_csv(source)
    _require_columns(frame, [path_col, label_col, *group_cols], source)
    out = pd.DataFrame({"path": [str((source.parent / p).resolve()) for p in frame[path_col].astype(str)]})
    if pd.api.types.is_integer_dtype(frame[label_col]):
        out["label"] = frame[label_col].astype(int)
    else:
        names = sorted(frame[label_col].astype(str).unique())
        out["label"] = frame[label_col].astype(str).map({n: i for i, n in enumerate(names)})
        out["label_name"] = frame[label_col].astype(str)
    out["split"] = _normalise_split(frame["split"], source) if "split" in frame.columns else default_split
    for col in frame.columns:
        if col not in (path_col, label_col, "split") and col not in out.columns:
            out[col] = frame[col]
    if group_cols:
        out["group"] = frame[list(group_cols)].astype(str).agg("|".join, axis=1)
    return out


_TYPO_NAME = re.compile(r"label=(?P<label>[^_=]+)_text=(?P<text>[^_=.]+)")


def read_typographic(directory: str | os.PathLike) -> pd.DataFrame:
    """A typographic-attack set: a CSV (``metadata.csv`` or the only CSV) with ``path,label,text``, or else
    image files named ``label=<class>_text=<word>[...].png`` (PAINT / RTA-100 style), searched recursively.

    Columns: ``path``, ``label`` (int, index into the sorted class names, also in ``frame.attrs['classes']``),
    ``label_name``, ``text`` (the written word), ``text_label`` (its class index, −1 if not a class), ``split``.
    """
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise SaeVitError(f"Typographic folder {root} does not exist; check the path.")
    csvs = [root / "metadata.csv"] if (root / "metadata.csv").is_file() else sorted(root.glob("*.csv"))
    if csvs:
        frame = pd.read_csv(csvs[0])
        _require_columns(frame, ["path", "label", "text"], csvs[0])
        paths = [str((root / p).resolve()) for p in frame["path"].astype(str)]
        label_names = frame["class_name" if "class_name" in frame.columns else "label"].astype(str)
        texts = frame["text"].astype(str)
        splits = ["test"] * len(frame)
        if "split" in frame.columns:
            splits = _normalise_split(frame["split"], csvs[0])
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        matches = [(p, _TYPO_NAME.search(p.name)) for p in files]
        matches = [(p, m) for p, m in matches if m]
        if not matches:
            raise SaeVitError(f"No metadata CSV and no 'label=X_text=Y' images in {root}; pass a typographic "
                              "attack folder.")
        paths = [str(p) for p, _ in matches]
        label_names = pd.Series([m["label"] for _, m in matches])
        texts = pd.Series([m["text"] for _, m in matches])
        splits = ["test"] * len(matches)
    classes = sorted(set(label_names))
    index = {c: i for i, c in enumerate(classes)}
    out = pd.DataFrame({"path": paths, "label": [index[n] for n in label_names],
                        "label_name": list(label_names), "text": list(texts),
                        "text_label": [index.get(t, -1) for t in texts], "split": list(splits)})
    out.attrs["classes"] = classes
    return out
