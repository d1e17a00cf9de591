"""Targeted suppression: remove a spurious attribute from CLIP's vision tower by zeroing SAE features.

The procedure (docs/suppress.md, ../PAPER.md §3): over the datasets of :mod:`.data`, rank features on train
(:mod:`.ranking`), choose the layer and N on val and evaluate on test (:mod:`.run`); :func:`suppress` here is
``saevit suppress`` and writes the results.

Suppression zeroes the chosen latents at every token the SAE reads, through :func:`~sae_vit.core.backbone.splice`
and :func:`sae_vit.core.edits.zero` (so the SAE's reconstruction error is kept). Baselines: no intervention;
N random live features; projecting out the spurious direction of a (group-balanced) linear probe on the
activations at the SAE's hook.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from sae_vit.analysis.common import ModelBundle, check_sae_matches, default_vocabulary, load_model, read_words
from sae_vit.analysis.suppress.data import TASKS, ImageBatches, TaskData, read_task
from sae_vit.analysis.suppress.ranking import LayerStats, LinearProbe, auroc, fit_logistic, mean_diff_scores
from sae_vit.analysis.suppress.run import (
    Condition,
    Progress,
    SuppressConfig,
    SuppressResult,
    group_metrics,
    run_conditions,
    run_suppress,
)
from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE

__all__ = ["TASKS", "Condition", "ImageBatches", "LayerStats", "LinearProbe", "SuppressConfig",
           "SuppressResult", "TaskData", "auroc", "fit_logistic", "group_metrics", "mean_diff_scores",
           "read_task", "run_conditions", "run_suppress", "suppress"]
OUTPUT_FILES = ("suppress_table.csv", "suppress_sweep.csv", "suppress_features.csv", "suppress_summary.json",
                "suppress_worst_by_layer.png")


def check_saes(saes: Sequence[SAE], paths: Sequence, backbone: Backbone,
               layers: list[int] | str | None = None) -> dict[int, tuple[SAE, str]]:
    """SAEs keyed by layer (only those of ``layers``, in its order, unless None or ``all``); each must fit the
    backbone, and one layer may have only one SAE."""
    by_layer: dict[int, tuple[SAE, str]] = {}
    for sae, path in zip(saes, paths, strict=True):
        check_sae_matches(sae, backbone, path)
        if sae.cfg.layer in by_layer:
            raise SaeVitError(f"Two SAEs for layer {sae.cfg.layer} ({by_layer[sae.cfg.layer][1]} and {path}); "
                              "pass one SAE per layer or pick layers with --layers.")
        by_layer[sae.cfg.layer] = (sae, str(path))
    if backbone.n_prefix != int(backbone.has_cls):
        raise SaeVitError(f"{backbone.name} has register tokens; suppress supports ViTs without registers.")
    by_layer = dict(sorted(by_layer.items()))
    if layers is None or layers == "all":
        return by_layer
    missing = [layer for layer in layers if layer not in by_layer]
    if missing:
        raise SaeVitError(f"No SAE for layer {missing[0]} among the --sae files (layers {list(by_layer)}); "
                          "pass an SAE for it or drop it from --layers.")
    return {layer: by_layer[layer] for layer in layers}


def _concepts(model: ModelBundle, vocab, text_embeddings) -> tuple[list[str], Tensor] | None:
    """The words chosen features are labelled with: ``vocab``, the toy's world words, or the names of the
    text-embeddings file; None (no labels) otherwise."""
    words = None
    if vocab is not None:
        words = read_words(vocab)
    elif model.backbone.name == "toy":
        words = default_vocabulary(model.backbone)
    elif text_embeddings is not None:
        words = model.head.names
    return (words, model.head.embed_concepts(words)) if words else None


def suppress(data: str | os.PathLike, task: str, saes: Sequence[str | os.PathLike], target: str | None = None,
             spurious: str | None = None, layers: list[int] | None = None, model: str | None = None,
             weights: str | os.PathLike | None = None, classes: Sequence[str] | None = None,
             text_embeddings: str | os.PathLike | None = None, vocab: str | os.PathLike | None = None,
             config: SuppressConfig = SuppressConfig(), out: str | os.PathLike | None = None,
             overwrite: bool = False, progress: Progress | None = None,
             ) -> tuple[SuppressResult, dict[str, Path | None]]:
    """``saevit suppress``: read the dataset and the SAEs, run :func:`run_suppress`, write the outputs under
    ``out`` (default ``<workdir>/suppress``). Returns the result and the written paths."""
    from sae_vit.core.defaults import workdir
    from sae_vit.io.resolve import find_saes

    out = Path(out) if out is not None else workdir() / "suppress"
    if not saes:
        raise SaeVitError("No SAEs given; pass --sae with one checkpoint per layer (or a folder of them).")
    paths = find_saes(list(saes))
    loaded = [SAE.load(p) for p in paths]
    bundle = load_model(model or loaded[0].cfg.model or "toy", weights, text_embeddings, device="auto")
    backbone, head = bundle.backbone, bundle.head
    by_layer = check_saes(loaded, paths, backbone, layers)
    task_data = read_task(data, task, target, spurious, classes, backbone.name)
    result = run_suppress(backbone, head, by_layer, task_data, config, _concepts(bundle, vocab, text_embeddings),
                          progress)
    return result, write_outputs(result, out)


def plot_worst_by_layer(sweep, path) -> Path | None:
    """PNG of worst-group accuracy by layer (SAE suppression at each layer's validation-best N, and the
    projection baseline; no intervention as a line), validation and test, one panel per evaluation."""
    from sae_vit.analysis.common import plot

    evals = list(dict.fromkeys(sweep["eval"]))

    def draw(axes):
        for ax, how in zip(axes[0], evals, strict=True):
            s = sweep[sweep["eval"] == how]
            for split, style in (("val", "--"), ("test", "-")):
                part = s[s["split"] == split]
                sae = part[part["method"] == "sae"].groupby("layer")["worst"].max()
                proj = part[part["method"] == "projection"].set_index("layer")["worst"]
                ax.plot(sae.index, 100 * sae.values, style, marker="o", color="C0", label=f"SAE suppression ({split})")
                ax.plot(proj.index, 100 * proj.values, style, marker="s", color="C2",
                        label=f"probe projection ({split})")
                base = part[part["method"] == "none"]["worst"]
                if len(base):
                    ax.axhline(100 * float(base.iloc[0]), linestyle=style, color="grey", linewidth=0.8,
                               label=f"no intervention ({split})")
            ax.set(xlabel="layer", ylabel="worst-group accuracy (%)", title=how.replace("_", "-"))
            ax.legend(fontsize=6)

    return plot(path, draw, ncols=len(evals), figsize=(5.5 * len(evals), 4), squeeze=False)


def write_outputs(result: SuppressResult, out: Path) -> dict[str, Path | None]:
    """Write the table, sweep and features CSVs, the summary JSON and the PNG atomically under ``out``."""
    from sae_vit.core.atomic import write_csv, write_json

    out.mkdir(parents=True, exist_ok=True)
    tables = (("table", result.table), ("sweep", result.sweep), ("features", result.features))
    return {**{name: write_csv(out / f"suppress_{name}.csv", frame) for name, frame in tables},
            "summary": write_json(out / "suppress_summary.json", result.summary),
            "plot": plot_worst_by_layer(result.sweep, out / "suppress_worst_by_layer.png")}
