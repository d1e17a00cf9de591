"""Steerability by layer on the toy CLIP: SAE features, residual neurons, random directions and the null edits.

    python examples/steer_layers.py [--out runs/steer_layers] [--layers 0,2,5,8,11] [--decide-at 0.3,paper]
    python examples/steer_layers.py --null-curve [--layers 2,5,8]

For every listed block of the toy CLIP it caches activations over synthetic-world images (train split), trains a
TopK SAE on all tokens (k = 16, 1,024 features), and runs steer-score on probe images from the validation split
with the default per-attribute world vocabulary, once per decision strength in --decide-at (mean hooked-token
norms, or ``paper`` for the paper's α = 150): 256 sampled live features, the 64 residual neurons, 256 random
directions and the null edits. It prints one row per layer and strength and writes steer_by_layer.csv under --out.

--null-curve prints S of the null edits (noise: largest and median over 8 seeds; partial erase) against the
strength in token norms, the measurement the default decision strength is chosen from (no SAE needed).
"""

import argparse
from pathlib import Path

import pandas as pd

import sae_vit.pipeline as api
from sae_vit.analysis.common import concept_vocabulary, load_model, load_probe_images
from sae_vit.analysis.steer import SteerConfig, build_context, score_nulls, score_saes, world_attributes
from sae_vit.analysis.steer.score import _attribute_index
from sae_vit.core.train import TrainConfig
from sae_vit.io.cache import CacheReader

NORMS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 150 / 768**0.5)


def null_curve(layers: list[int], n_images: int, norms=NORMS) -> pd.DataFrame:
    bundle = load_model("toy")
    words, text = concept_vocabulary(bundle)
    groups = _attribute_index(world_attributes(words))
    probe = load_probe_images(bundle.backbone, n_images=n_images, seed=1)
    rows = []
    for layer in layers:
        ctx = build_context(bundle.backbone, layer, "resid_post", probe, text, "all", 100.0, groups)
        nulls = score_nulls(ctx, norms, n_seeds=8, seed=0)
        for a, t in enumerate(nulls.token_norms):
            rows.append({"layer": layer, "token_norms": round(t, 3), "alpha": round(t * 768**0.5, 1),
                         "noise_max": round(float(nulls.noise_S[:, a].max()), 4),
                         "noise_median": round(float(nulls.noise_S[:, a].median()), 4),
                         "erase": round(float(nulls.erase_S[a]), 4), "erase_full": round(nulls.full_S, 4),
                         "erase_full_token_norms": round(nulls.full_token_norms, 3)})
    return pd.DataFrame(rows)


def layer_row(layer: int, decide: str, summary: dict) -> dict:
    d = summary["decision"]
    row = {"layer": layer, "decide_at": decide, "token_norms": round(d["token_norms"], 3),
           "alpha": round(d["alpha"]["feature"], 1), "s": round(d["s"]["feature"], 2)}
    for kind, k in summary["kinds"].items():
        row[f"{kind}_scored"] = k["scored"]
        row[f"{kind}_steerable_%"] = round(100 * k["fraction"], 1)
        row[f"{kind}_threshold_%"] = round(100 * k["fraction_threshold"], 1)
        row[f"{kind}_targets"] = k["distinct_targets"]
        row[f"{kind}_agree_n"] = k["n"]
        row[f"{kind}_agreement_%"] = None if k["agreement"] is None else round(100 * k["agreement"], 1)
        row[f"{kind}_chance_%"] = None if k["chance"] is None else round(100 * k["chance"], 1)
    nulls = summary["nulls"]
    for kind in ("null_noise", "null_erase", "null_erase_full"):
        row[f"{kind}_S"] = round(nulls[kind]["S"], 3)
        row[f"{kind}_steerable"] = nulls[kind]["steerable"]
    row["null_noise_median_S"] = round(nulls["null_noise_median"], 3)
    for name, test in summary["agreement_tests"].items():
        row[f"p_{name}"] = None if test["p"] is None else round(test["p"], 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/steer_layers"))
    parser.add_argument("--n-images", type=int, default=2048)
    parser.add_argument("--n-tokens", type=int, default=600_000)
    parser.add_argument("--max-features", type=int, default=256)
    parser.add_argument("--probe-images", type=int, default=64)
    parser.add_argument("--layers", default="0,2,5,8,11")
    parser.add_argument("--decide-at", default="0.3,paper",
                        help="Decision strengths: token norms, or 'paper' (the largest alpha, 150).")
    parser.add_argument("--null-curve", action="store_true", help="Only print S of the nulls against strength.")
    parser.add_argument("--norms", default=None, help="With --null-curve: strengths in token norms (comma list).")
    args = parser.parse_args()

    wanted = [int(x) for x in args.layers.split(",")]
    if args.null_curve:
        with pd.option_context("display.width", 200, "display.max_rows", 500):
            norms = NORMS if args.norms is None else [float(x) for x in args.norms.split(",")]
            print(null_curve(wanted, args.probe_images, norms).to_string(index=False))
        return
    cache_dir = args.out / "cache"
    if not (cache_dir / "manifest.json").exists():
        api.cache(out=cache_dir, model="toy", layers=wanted, tokens="all", max_images=args.n_images)
    layers = [layer for layer in CacheReader(cache_dir).layers if layer in set(wanted)]
    rows = []
    for layer in layers:
        sae_path = args.out / "saes" / f"layer_{layer}" / "all" / "sae.safetensors"
        if not sae_path.exists():
            api.train(layer, "all", cache_dir, sae_path, config=TrainConfig(k=16, expansion=16), n_tokens=args.n_tokens)
        for decide in args.decide_at.split(","):
            cfg = SteerConfig(alphas=(150,), decide_at=None if decide == "paper" else float(decide), curve_top=0)
            reports = score_saes([sae_path], model="toy", n_images=args.probe_images, config=cfg,
                                 max_features=args.max_features, random_control=args.max_features,
                                 out=args.out / "steer" / f"layer_{layer}_decide_{decide}", overwrite=True)
            rows.append(layer_row(layer, decide, reports[0].summary))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "steer_by_layer.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 60):
        print(table)


if __name__ == "__main__":
    main()
