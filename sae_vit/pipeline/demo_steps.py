"""The steps of ``saevit demo`` (:mod:`sae_vit.pipeline.demo`): each runs one command's library function on the
demo's folder and returns the plain numbers the report shows (JSON-ready dicts, paths relative to the folder)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from sae_vit.core.defaults import default_sae_path

#: The demo's folder of CLS-only activations (``DemoConfig.cls_images`` images) and of its ReLU+L1 SAEs.
CLS_CACHE = "cache_cls"
RELU_SAES = "saes_relu"


def _num(x) -> float | None:
    """A float for JSON (None for NaN / missing)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _rel(path, out: Path) -> str | None:
    return None if path is None else Path(path).relative_to(out).as_posix()


def cache(out: Path, cfg, overwrite: bool) -> dict:
    """``saevit cache`` over the world's images (all tokens), and over ``cfg.cls_images`` images for CLS tokens
    only (one per image: the CLS SAEs need more images than the patch ones); an identical finished cache is kept.
    Returns the all-token cache's manifest."""
    import sae_vit.pipeline as api

    if cfg.cls_images:
        api.cache(out=out / CLS_CACHE, model="toy", layers=list(cfg.layers), tokens="cls", max_images=cfg.cls_images,
                  seed=cfg.seed, batch_size=256, overwrite=overwrite)
    return api.cache(out=out / "cache", model="toy", layers=list(cfg.layers), tokens="all",
                     max_images=cfg.n_images, seed=cfg.seed, batch_size=128, overwrite=overwrite)


def train_and_sparsity(out: Path, cfg, say: Callable[[str], None]):
    """Train the demo's SAEs that are missing (TopK per layer x token type; ReLU+L1 per layer x {cls, patches}),
    CLS ones on the CLS cache when there is one, and write the sparsity table (each SAE on the held-out split of
    the cache it was trained on)."""
    from sae_vit.analysis import sparsity as table
    from sae_vit.pipeline.training import train_many

    groups = demo_jobs(out, cfg)
    for (cache_dir, n_tokens), jobs in groups.items():
        say(f"  training {len(jobs)} SAE(s) on {cache_dir.name}/: " + ", ".join(
            f"{j.config.architecture} {j.layer}/{j.tokens}" for j in jobs))
        train_many(cache_dir, jobs, n_tokens=n_tokens)
    paths = [job.out for jobs in groups.values() for job in jobs]
    caches = list(dict.fromkeys(cache_dir for cache_dir, _ in groups))
    return table.run(paths, caches, out / "sparsity.csv", plot=True, overwrite=True)


def sparsity_results(table, manifest: dict, cfg) -> dict:
    """The sparsity rows the report shows, and the density contrasts of the ReLU+L1 SAEs it judges the claim on:
    patches against CLS at each layer, and the CLS token at the deepest layer against the shallowest."""
    from sae_vit.analysis.sparsity import DENSITY_MARGIN, MIN_EVAL_TOKENS, density_contrast

    keys = ("layer", "tokens", "architecture", "d_sae", "k", "l1_coefficient", "l0", "fvu", "dead_fraction",
            "dense_fraction", "n_eval_tokens", "reliable")
    text = ("tokens", "architecture")
    records = table.rows.to_dict("records")
    rows = [{k: r[k] if k in text else bool(r[k]) if k == "reliable" else _num(r[k]) for k in keys} for r in records]
    out = Path(table.csv_path).parent
    l0s = {(int(r["layer"]), r["tokens"]): (table.token_l0 or {}).get(r["path"]) for r in records
           if r["architecture"] == "relu"}
    l0s = {k: v for k, v in l0s.items() if v is not None and len(v)}
    seed = cfg.seed
    layers = sorted({layer for layer, t in l0s if t == "cls" and (layer, "patches") in l0s})
    patches = [{"layer": layer, **density_contrast(l0s[(layer, "patches")], l0s[(layer, "cls")], seed=seed)}
               for layer in layers]
    cls_layers = sorted(layer for layer, t in l0s if t == "cls")
    depth = ({"first": cls_layers[0], "last": cls_layers[-1],
              **density_contrast(l0s[(cls_layers[-1], "cls")], l0s[(cls_layers[0], "cls")], seed=seed)}
             if len(cls_layers) > 1 else None)
    return {"rows": rows, "plot": _rel(table.plot_path, out), "csv": _rel(table.csv_path, out),
            "n_images": manifest.get("n_images"), "d_model": manifest.get("d_model"),
            "cls_images": cfg.cls_images, "relu_l1": cfg.relu_l1, "min_eval_tokens": MIN_EVAL_TOKENS,
            "margin": DENSITY_MARGIN, "patches_vs_cls": patches, "cls_depth": depth}


def steer(out: Path, cfg) -> list:
    """``saevit steer-score`` on each layer's ``all``-token SAE, with its null edits and agreement test."""
    from sae_vit.analysis.steer import SteerConfig, score_saes

    paths = [default_sae_path(layer, "all", root=out / "saes") for layer in cfg.layers]
    # Decided where the null edits are not steerable: with the demo's 32 probe images the partial erase is
    # stronger than with the default 64 (its mean image is nearer each image) and passes S = 0.10 at 0.3 token
    # norms at layer 2, not at 0.25 (docs/steer.md); the curves sweep up to alpha 20 (the paper's 150
    # saturates the toy's vocabulary for every push, nulls included).
    config = SteerConfig(alphas=(-5, 0, 5, 10, 20), decide_at=0.25)
    return score_saes(paths, model="toy", n_images=cfg.steer_images, config=config,
                      max_features=cfg.steer_features, random_control=cfg.steer_features, seed=cfg.seed,
                      out=out / "steer")


def steer_results(reports: list, out: Path) -> dict:
    """Per scored SAE: its layer, width, the decision strength (α, s, token norms), the share of steerable units
    of each family under the rule, the nulls, the steer–detect agreement test and its best features."""
    from sae_vit.analysis.steer import results_stem
    from sae_vit.core.sae import SAE

    layers = []
    for report in reports:
        s = report.summary
        units = report.units
        feats = units[units["kind"] == "feature"].sort_values("S", ascending=False).head(5)
        stem = results_stem(SAE.load(s["path"]).cfg)
        nulls = {k: s["nulls"][k] for k in ("null_noise", "null_erase", "null_erase_full")}
        layers.append({"layer": s["layer"], "d_sae": s["d_sae"], "kinds": s["kinds"], "alphas": s["alphas"],
                       "threshold": s["threshold"], "n_images": s["n_images"], "vocabulary": s["vocabulary"],
                       "attributes": list(s["attributes"] or []), "rule": s["rule"],
                       "decision": {"token_norms": s["decision"]["token_norms"],
                                    "alpha": s["decision"]["alpha"]["feature"], "s": s["decision"]["s"]["feature"]},
                       "nulls": nulls, "null_bar": s["nulls"]["bar"], "agreement_tests": s["agreement_tests"],
                       "top": [{"index": int(r["index"]), "target": r["target"], "S": _num(r["S"])}
                               for r in feats.to_dict("records")],
                       "plot": f"steer/{stem}.png" if (out / "steer" / f"{stem}.png").is_file() else None})
    return {"layers": layers}


def model():
    """The toy CLIP and its text head, loaded once for the steps that share them."""
    from sae_vit.analysis.common import load_model
    from sae_vit.core.dist import resolve_device

    return load_model("toy", device=str(resolve_device("auto")))


def _export_waterbirds(data: Path, n: int, seed: int) -> None:
    """The world's Waterbirds-like task in the real layout, unless this folder already holds this export."""
    from sae_vit.core.atomic import write_json
    from sae_vit.world import scenes as world

    marker = data / "demo_export.json"
    want = {"task": "waterbirds", "n": n, "seed": seed}
    if marker.is_file() and (data / "metadata.csv").is_file() and json.loads(marker.read_text()) == want:
        return
    world.export_task("waterbirds", data, n=n, seed=seed, overwrite=True)
    write_json(marker, want)


def suppress(out: Path, cfg, bundle=None) -> dict:
    """``saevit suppress`` on the Waterbirds-like task with the demo's SAEs (one per layer, all tokens when
    trained, else the first token type): rank on train, choose layer and N on val, report on test."""
    from sae_vit.analysis.suppress import SuppressConfig
    from sae_vit.analysis.suppress import suppress as run

    data = out / "suppress" / "data"
    _export_waterbirds(data, cfg.suppress_images, cfg.seed)
    tokens = "all" if "all" in cfg.tokens else cfg.tokens[0]
    paths = [default_sae_path(layer, tokens, root=out / "saes") for layer in cfg.layers]
    # zero-shot only (the report's claim): the linear-probe evaluation would add its own test conditions
    config = SuppressConfig(n_features=tuple(cfg.suppress_n_features), probe=False, batch_size=128, seed=cfg.seed)
    result, written = run(data, "waterbirds", paths, model="toy", config=config, out=out / "suppress",
                          overwrite=True)
    s, sweep = result.summary, result.sweep
    keys = ("eval", "method", "layer", "n", "val_worst", "test_avg", "test_avg_weighted", "test_worst",
            "test_worst_std", "draws")
    table = [{k: r[k] if k in ("eval", "method") else _num(r[k]) for k in keys}
             for r in result.table.to_dict("records")]
    by_layer = []  # zero-shot, test: each layer at its validation-best N
    test = sweep[(sweep["eval"] == "zero_shot") & (sweep["method"] == "sae") & (sweep["split"] == "test")]
    for r in test.sort_values("layer").to_dict("records"):
        by_layer.append({"layer": int(r["layer"]), "n": int(r["n"]), "worst": _num(r["worst"]), "avg": _num(r["avg"])})
    feats = result.features[result.features["eval"] == "zero_shot"].head(8)
    return {"n_images": s["n_images"], "groups": s["groups"], "classes": s["classes"], "tokens": tokens,
            "layers": list(cfg.layers), "n_features": list(cfg.suppress_n_features), "chosen": s["chosen"],
            "n_tried": s.get("n_tried"), "n_live": s.get("n_live"),
            "table": table, "by_layer": by_layer,
            "features": [{"feature": int(r["feature"]), "score": _num(r["score"]), "concepts": r["concepts"] or ""}
                         for r in feats.to_dict("records")],
            "plot": _rel(written.get("plot"), out), "csv": _rel(written["table"], out)}


def typo(out: Path, cfg, bundle) -> dict:
    """The shipped typographic defence (the package's SAE and text-feature file) on the world's own typographic
    test split: clean, attacked and unrelated-word-control accuracy and attack success, without and with it, and
    the reading-specific gain (attack gain minus control gain: what it recovers beyond undoing occlusion)."""
    from sae_vit.analysis.common import class_embeddings
    from sae_vit.analysis.typo import (
        ASSET_FEATURES,
        ASSET_SAE,
        asset_dir,
        defence_from_files,
        world_native_set,
    )
    from sae_vit.analysis.typo.defences import TEMPLATE, evaluate
    from sae_vit.core.atomic import write_json
    from sae_vit.world import scenes as world

    bb = bundle.backbone
    defence, feats = defence_from_files(asset_dir() / ASSET_SAE, asset_dir() / ASSET_FEATURES, None, bb.device)
    data = world_native_set(bb, "test", cfg.typo_images, cfg.seed)
    class_emb = class_embeddings(bundle.head, list(world.SHAPES), (TEMPLATE,))
    base = evaluate(bb, data, class_emb)
    metrics = {"none": base.against(base).as_dict(), "sae": evaluate(bb, data, class_emb, defence, base=base).as_dict()}
    chosen = feats.get("selection", {})
    result = {"sae": ASSET_SAE, "features_file": ASSET_FEATURES, "layer": defence.sae.cfg.layer,
              "n": len(defence.features), "defence": defence.describe(), "n_images": cfg.typo_images,
              "selected_on": {"split": chosen.get("split"), "n_images": chosen.get("n_images"),
                              "rule": chosen.get("rule", "highest attacked accuracy")},
              "metrics": metrics, "json": "typo/typo_results.json"}
    write_json(out / "typo" / "typo_results.json", result)
    return result


def inspect(out: Path, cfg) -> dict:
    """``saevit inspect`` of the middle layer's SAE (all tokens when trained): the features steer-score scored
    that fire on its probe images (so the browser can sort by steerability), else random live ones."""
    import pandas as pd

    from sae_vit.analysis.inspect import inspect_sae
    from sae_vit.analysis.steer import results_stem
    from sae_vit.core.sae import SAE

    layer = cfg.layers[(len(cfg.layers) - 1) // 2]
    tokens = "all" if "all" in cfg.tokens else cfg.tokens[0]
    path = default_sae_path(layer, tokens, root=out / "saes")
    csv = out / "steer" / f"{results_stem(SAE.load(path).cfg)}.csv"
    features = None
    if csv.is_file():
        units = pd.read_csv(csv)
        scored = units[(units["kind"] == "feature") & (units["density"] > 0)]
        features = sorted(scored["index"].astype(int).tolist())[: cfg.inspect_features] or None
    remove_tiles(out / "inspect" / "tiles")  # an earlier run's tiles of other features
    result = inspect_sae(str(path), model="toy", n_images=cfg.inspect_images, features=features,
                         random=cfg.inspect_features, k=cfg.inspect_top_images, steer_dir=out / "steer",
                         out=out / "inspect", seed=cfg.seed, batch_size=128, overwrite=True)
    rows = result["features"]
    return {"index": _rel(result["index"], out), "layer": layer, "tokens": tokens, "n_features": len(rows),
            "n_images": result["inspection"].n_images, "n_scored": sum(r["S"] == r["S"] for r in rows),
            "picked": "steer-scored live features" if features else "random live features"}


def write_results(path: Path, results: dict) -> Path:
    """``demo_results.json``: every number of the report (NaN written as null)."""
    from sae_vit.core.atomic import write_text

    return write_text(path, json.dumps(results, indent=1, default=str, allow_nan=False) + "\n")


def remove_tiles(folder: Path) -> None:
    """Delete the feature browser's tiles (``f{feature}_{ranking}_{rank}.png``) from an earlier run, nothing else."""
    if folder.is_dir():
        for path in folder.iterdir():
            if re.fullmatch(r"f\d+_(patch|cls)_\d+\.png", path.name):
                path.unlink()


def demo_jobs(out: Path, cfg) -> dict:
    """The demo's SAEs as :class:`~sae_vit.pipeline.training.Job` lists keyed by (cache folder, training tokens):
    TopK per layer x token type under ``saes/``, ReLU+L1 per layer x {cls, patches} under ``saes_relu/``; CLS
    SAEs train on the CLS cache when ``cfg.cls_images``."""
    from sae_vit.core.train import TrainConfig
    from sae_vit.pipeline.training import Job

    topk = TrainConfig(k=cfg.k, expansion=cfg.expansion, seed=cfg.seed)
    relu = TrainConfig(architecture="relu", l1_coefficient=cfg.relu_l1, expansion=cfg.expansion, seed=cfg.seed,
                       lr=cfg.relu_lr, batch_size=cfg.relu_batch_size)
    groups: dict = {}

    def add(config, tokens_list, root, n_tokens):
        for tokens in tokens_list:
            cache_dir = out / (CLS_CACHE if tokens == "cls" and cfg.cls_images else "cache")
            groups.setdefault((cache_dir, n_tokens), []).extend(
                Job(layer, tokens, config, default_sae_path(layer, tokens, root=out / root)) for layer in cfg.layers)

    add(topk, cfg.tokens, "saes", cfg.n_tokens)
    if cfg.relu_l1:
        add(relu, relu_tokens(cfg), RELU_SAES, cfg.relu_n_tokens)
    return groups


def relu_tokens(cfg) -> list[str]:
    """The token types the demo trains ReLU+L1 SAEs on: CLS and patches (the sparsity claim's two)."""
    return [t for t in ("cls", "patches") if t in cfg.tokens]
