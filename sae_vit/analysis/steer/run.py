"""``saevit steer-score`` end to end: load the model, vocabulary and probe images, score every SAE, write the
tables (one CSV and JSON per SAE, ``steer_summary.csv``) and the curve plots."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from sae_vit.analysis.steer.score import _pick, plot_curves, results_stem, steer_score
from sae_vit.core.sae import SAE
from sae_vit.world import scenes as world_scenes


def world_attributes(words: Sequence[str]) -> list[str] | None:
    """Each word's world attribute (object, colour, background, size), or None when a word is not a world
    concept (then the vocabulary stays flat)."""
    of = {w: a for a, ws in world_scenes.concept_attributes().items() for w in ws}
    return [of[w] for w in words] if all(w in of for w in words) else None


def world_labels(words: Sequence[str], task: str | None, n_images: int, seed: int) -> Tensor:
    """[N, V] ground truth of the world probe images (the same scenes :func:`load_probe_images` renders):
    1 where the image shows the concept."""
    scenes, _ = world_scenes.task_scenes(task or "shapes", "val", n_images, seed)
    shown = [set(world_scenes.scene_concepts(s)) for s in scenes]
    return torch.tensor([[float(w in s) for w in words] for s in shown])


def summary_rows(report, path) -> list[dict]:
    """``steer_summary.csv``'s rows of one report: one per family and one per null, with α, s and token norms."""
    import json

    s = report.summary
    head = {"layer": s["layer"], "site": s["site"], "tokens": s["sae_tokens"]}
    rows = [{**head, "kind": kind, **{k: v for k, v in k_.items()},
             "strengths": json.dumps(s["strengths"][kind]),
             "strengths_token_norms": json.dumps([round(t, 4) for t in s["strengths_token_norms"][kind]]),
             "sae": str(path)} for kind, k_ in s["kinds"].items()]
    nulls = s["nulls"]
    rows += [{**head, "kind": kind, "S": nulls[kind]["S"], "steerable": int(nulls[kind]["steerable"]),
              "s_token_norms": s["decision"]["token_norms"] if kind != "null_erase_full" else float("nan"),
              "sae": str(path)} for kind in ("null_noise", "null_erase", "null_erase_full")]
    return rows


def score_saes(saes: list[str | os.PathLike] | None = None, model: str | None = None,
               weights: str | os.PathLike | None = None, vocab: str | os.PathLike | None = None,
               text_embeddings: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
               world: str | None = None, n_images: int = 64, config=None, features: list[int] | None = None,
               max_features: int | None = 256, neurons: bool = True, mlp_neurons: bool = False,
               random_control: int = 256, seed: int = 0, out: str | os.PathLike | None = None,
               overwrite: bool = False, device: str = "auto", progress: Callable | None = None) -> list:
    """Score every SAE in ``saes`` (default: the working folder's); write ``steer_<layer>_<tokens>.csv`` per
    SAE, ``steer_summary.csv`` and a PNG of S against strength under ``out``. Returns the reports.

    On the toy with its default vocabulary, each world attribute's concepts are scored among themselves and the
    agreement uses the world's labels of the probe images; otherwise the vocabulary is flat and the labels are
    the unsteered zero-shot top concepts."""
    import pandas as pd

    from sae_vit.analysis.common import concept_vocabulary, load_model, load_probe_images
    from sae_vit.core.atomic import write_csv, write_json
    from sae_vit.core.defaults import DEFAULT_MODEL, workdir
    from sae_vit.core.dist import resolve_device
    from sae_vit.io.resolve import find_saes

    device = resolve_device(device)
    out = Path(out) if out is not None else workdir() / "steer"
    loaded = [(p, SAE.load(p, device)) for p in find_saes(saes)]
    for _path, sae in loaded:  # before any work or any folder is made
        _pick(sae.cfg.d_sae, features, max_features, seed)
    bundle = load_model(model or loaded[0][1].cfg.model or DEFAULT_MODEL, weights, text_embeddings, device)
    backbone = bundle.backbone
    words, text = concept_vocabulary(bundle, vocab)
    default_vocab = vocab is None and bundle.head.names is None
    attributes = world_attributes(words) if default_vocab else None
    probe = load_probe_images(backbone, images, world, n_images, seed=seed + 1)
    labels = world_labels(words, world, n_images, seed + 1).to(device) if images is None else None
    out.mkdir(parents=True, exist_ok=True)
    reports, rows = [], []
    for path, sae in loaded:
        report = steer_score(sae, backbone, probe, words, text.to(device), config, features, max_features, neurons,
                             mlp_neurons, random_control, seed, str(path), progress, attributes, labels)
        stem = results_stem(sae.cfg)
        write_csv(out / f"{stem}.csv", report.units)
        write_json(out / f"{stem}.json", report.summary)
        plot_curves(report.units, out / f"{stem}.png")
        rows += summary_rows(report, path)
        reports.append(report)
    write_csv(out / "steer_summary.csv", pd.DataFrame(rows))
    return reports
