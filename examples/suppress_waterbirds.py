"""Targeted suppression on the toy CLIP's Waterbirds-like task, end to end (docs/suppress.md).

1. export the task in the real Waterbirds layout (``saevit world export --task waterbirds``);
2. cache the train split's activations at every layer (``saevit cache --images train.csv --layers all``);
3. train one TopK SAE per layer (``saevit train --layer L --tokens all``);
4. ``saevit suppress``: rank features on train, choose layer and N on val, evaluate on test.

Prints the before/after table, the layer sweep and the chosen features. Run from the repository root:

    python examples/suppress_waterbirds.py --work /tmp/suppress_wb          # the shipped toy CLIP
    python examples/suppress_waterbirds.py --clip other_toy_clip.safetensors  # another toy CLIP file

Steps whose outputs exist are skipped, so a re-run only redoes what is missing (``--fresh`` redoes all).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch


def image_tower_file(clip_path: Path, out: Path) -> Path:
    """The image tower of a toy-CLIP file as a plain state dict (what ``--model toy --weights`` caches with)."""
    from safetensors.torch import save_file

    from sae_vit.world.toyclip import load_toy_clip

    if not out.exists():
        state = load_toy_clip(clip_path).image.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("saevit_runs/suppress_waterbirds"))
    parser.add_argument("--clip", type=Path, default=None, help="A toy-CLIP file (default: the shipped one).")
    parser.add_argument("--n", type=int, default=1000, help="Images per split.")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--n-tokens", type=int, default=400_000, help="Training tokens per SAE.")
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--n-features", default="1,2,4,8,16,32,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="Delete --work first.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import sae_vit.pipeline as api
    from sae_vit.analysis.suppress import SuppressConfig, suppress
    from sae_vit.core.train import TrainConfig
    from sae_vit.world import scenes as world

    work = args.work
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = work / "data"
    if not (data / "metadata.csv").exists():
        world.export_task("waterbirds", data, n=args.n, seed=0)
    # SAEs see the train split only (no labels are used, but no val/test image either)
    train_csv = data / "train.csv"
    if not train_csv.exists():
        lines = (data / "metadata.csv").read_text().splitlines()
        train_csv.write_text("\n".join([lines[0]] + [r for r in lines[1:] if r.split(",")[3] == "0"]) + "\n")
    weights = image_tower_file(args.clip, work / "image_tower.safetensors") if args.clip else None
    layers = list(range(12)) if args.layers == "all" else sorted({int(x) for x in args.layers.split(",")})
    cache_dir = work / "cache"
    if not (cache_dir / "manifest.json").exists():
        api.cache(images=train_csv, out=cache_dir, model="toy", weights=weights, layers=layers, tokens="all",
                  batch_size=128)
    t_cache = time.perf_counter()
    sae_paths = []
    for layer in layers:
        path = work / "saes" / f"layer_{layer}" / "all" / "sae.safetensors"
        if not path.exists():
            cfg = TrainConfig(expansion=args.expansion, k=args.k, batch_size=1024, warmup_steps=50, device="cpu")
            api.train(layer, "all", cache_dir, path, cfg, n_tokens=args.n_tokens)
        sae_paths.append(path)
    t_train = time.perf_counter()
    cfg = SuppressConfig(n_features=tuple(int(n) for n in args.n_features.split(",")))
    result, written = suppress(data, "waterbirds", sae_paths, model="toy", weights=args.clip, config=cfg,
                               out=work / "suppress", overwrite=True)
    t_end = time.perf_counter()
    report(result)
    print(f"\ntimes: export+cache {t_cache - t0:.0f} s, SAE training {t_train - t_cache:.0f} s, "
          f"suppress {t_end - t_train:.0f} s; outputs in {work / 'suppress'}")
    return {"result": result, "written": written}


def report(result) -> None:
    """Print the table, the sweep by layer and the chosen features."""
    import pandas as pd

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    t = result.table.copy()
    pct = [c for c in t.columns if c.startswith(("val_", "test_"))]
    t[pct] = (100 * t[pct]).round(1)
    print("== before / after (test split; layer and N chosen on val) ==")
    print(t.to_string(index=False))
    print("\n== layer sweep: worst-group accuracy (%) at each layer's val-best N ==")
    s = result.sweep
    for how in dict.fromkeys(s["eval"]):
        part = s[(s["eval"] == how) & (s["method"] == "sae")]
        val = part[part["split"] == "val"].sort_values(["worst", "avg"], ascending=False).groupby("layer").head(1)
        test = part[part["split"] == "test"].set_index(["layer", "n"])
        proj = s[(s["eval"] == how) & (s["method"] == "projection")]
        rows = []
        for r in val.sort_values("layer").itertuples():
            pv = proj[(proj["layer"] == r.layer) & (proj["split"] == "val")]["worst"].iloc[0]
            pt = proj[(proj["layer"] == r.layer) & (proj["split"] == "test")]["worst"].iloc[0]
            rows.append({"layer": r.layer, "best N": r.n, "val worst": 100 * r.worst, "val avg": 100 * r.avg,
                         "test worst": 100 * test.loc[(r.layer, r.n), "worst"],
                         "test avg": 100 * test.loc[(r.layer, r.n), "avg"],
                         "proj val worst": 100 * pv, "proj test worst": 100 * pt})
        print(f"[{how}]")
        print(pd.DataFrame(rows).round(1).to_string(index=False))
    print("\n== suppressed features at the chosen layer ==")
    print(result.features.head(16).to_string(index=False))
    print("\nchosen:", result.summary["chosen"], "projection layer:", result.summary["chosen_projection_layer"])


if __name__ == "__main__":
    main()
