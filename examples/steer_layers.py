"""Steerability by layer on the toy CLIP: SAE features against residual neurons and random directions.

    python examples/steer_layers.py [--out runs/steer_layers] [--n-images 2048] [--max-features 256] \
        [--decide-at 150,10] [--layers 5,7,9]

The offline analogue of the paper's "10-15 % of features are steerable; SAEs give thousands more than neurons":
for every block of the toy CLIP it caches activations over synthetic-world images (train split), trains a TopK
SAE on all tokens, and runs steer-score on probe images from the validation split, once per strength in
--decide-at (relative units; steerable means S > 0.10 at that strength). It prints one table and writes
steer_by_layer.csv (one row per layer and strength, and each run's steer-score outputs) under --out.
"""

import argparse
from pathlib import Path

import pandas as pd

import sae_vit.pipeline as api
from sae_vit.analysis.steer import SteerConfig, score_saes
from sae_vit.core.train import TrainConfig
from sae_vit.io.cache import CacheReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/steer_layers"))
    parser.add_argument("--n-images", type=int, default=2048)
    parser.add_argument("--n-tokens", type=int, default=600_000)
    parser.add_argument("--max-features", type=int, default=256)
    parser.add_argument("--probe-images", type=int, default=48)
    parser.add_argument("--layers", default="all")
    parser.add_argument("--decide-at", default="150", help="Strengths at which steerability is decided (comma list).")
    args = parser.parse_args()

    cache_dir = args.out / "cache"
    if not (cache_dir / "manifest.json").exists():
        api.cache(out=cache_dir, model="toy", layers="all" if args.layers == "all" else [int(x) for x in args.layers.split(",")], tokens="all", max_images=args.n_images)
    layers = CacheReader(cache_dir).layers
    if args.layers != "all":  # a subset of the cached blocks (the cache may hold more)
        wanted = set(layers) if args.layers == "all" else {int(x) for x in args.layers.split(",")}
        layers = [layer for layer in layers if layer in wanted]
    rows = []
    for layer in layers:
        sae_path = args.out / "saes" / f"layer_{layer}" / "all" / "sae.safetensors"
        if not sae_path.exists():
            api.train(layer, "all", cache_dir, sae_path, config=TrainConfig(k=16, expansion=16), n_tokens=args.n_tokens)
        for alpha in [float(a) for a in args.decide_at.split(",")]:
            reports = score_saes([sae_path], model="toy", n_images=args.probe_images,
                                      config=SteerConfig(alphas=(alpha,)), max_features=args.max_features,
                                      random_control=args.max_features,
                                      out=args.out / "steer" / f"layer_{layer}_alpha_{alpha:g}", overwrite=True)
            s = reports[0].summary
            row = {"layer": layer, "alpha": alpha, "s": round(s["strengths"]["feature"][-1], 2)}
            for kind, k in s["kinds"].items():
                row[f"{kind}_scored"] = k["scored"]
                row[f"{kind}_steerable"] = k["steerable"]
                row[f"{kind}_%"] = round(100 * k["fraction"], 1)
                row[f"{kind}_targets"] = k["distinct_targets"]
            row["est_steerable_features_total"] = round(row["feature_%"] / 100 * s["d_sae"])
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "steer_by_layer.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table)


if __name__ == "__main__":
    main()
