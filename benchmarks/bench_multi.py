"""Many SAEs from one pass: `saevit train --layer 0,1,2 --tokens cls,patches` against one run per SAE.

Writes a synthetic cache (fp16 shards, d_model 768, 50 tokens per image, several layers), then trains the same
layers x token types SAEs, with the same recipe and the same number of tokens each, twice, each in its own
subprocess: once with one `api.train` call (:func:`sae_vit.pipeline.training.train_many`: each shard read once per layer
and pass, its batches fed to every SAE of that stream) and once as one `api.train` call per SAE, one after
another. Prints wall time, peak RSS and mean held-out FVU of both, and the speed-up.

    python benchmarks/bench_multi.py                       # 3 layers x {cls, patches} = 6 SAEs, d_sae 3072
    python benchmarks/bench_multi.py --layers 4 --expansion 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train_memory import D_MODEL, TOKENS_PER_IMAGE, write_synthetic_cache


def run(mode: str, cache: str, args) -> dict:
    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    cfg = TrainConfig(expansion=args.expansion, k=args.k, batch_size=args.batch_size, device="cpu")
    layers = list(range(args.layers))
    out = Path(cache) / f"saes_{mode}"
    start = time.perf_counter()
    if mode == "many":
        results = api.train(layers, args.tokens.split(","), cache, out, cfg, n_tokens=args.n_tokens, overwrite=True)
    else:
        results = [api.train(layer, tokens, cache, out / f"layer_{layer}" / tokens / "sae.safetensors", cfg,
                             n_tokens=args.n_tokens, overwrite=True)
                   for layer in layers for tokens in args.tokens.split(",")]
    seconds = time.perf_counter() - start
    fvus = [sae.cfg.training["fvu"] for sae, _ in results]
    return {"seconds": seconds, "n_saes": len(results), "fvu": sum(fvus) / len(fvus),
            "tokens_seen": sum(sae.cfg.training["tokens_seen"] for sae, _ in results),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3, help="layers in the cache (all are trained)")
    parser.add_argument("--tokens", default="cls,patches", help="token types, one SAE per layer and type")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--images-per-shard", type=int, default=256)
    parser.add_argument("--n-tokens", type=int, default=100_000, help="training tokens per SAE")
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--only", nargs=2, default=None, help=argparse.SUPPRESS)  # subprocess: MODE CACHE
    args = parser.parse_args()
    if args.only:
        print(json.dumps(run(args.only[0], args.only[1], args)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.layers} layers x {args.tokens}, "
          f"{args.shards} shards x {args.images_per_shard} images x {TOKENS_PER_IMAGE} tokens, d_model {D_MODEL}, "
          f"d_sae {args.expansion * D_MODEL}, k {args.k}, batch {args.batch_size}, {args.n_tokens} tokens per SAE")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_cache(Path(tmp), args.shards, args.images_per_shard, tuple(range(args.layers)))
        passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "only"]
        for mode in ("sequential", "many"):
            proc = subprocess.run([sys.executable, __file__, *passthrough, "--only", mode, tmp],
                                  capture_output=True, text=True, check=True)
            rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'mode':<12}{'SAEs':>6}{'wall s':>9}{'tokens/s':>10}{'mean FVU':>10}{'peak RSS MiB':>14}")
    for mode, r in rows.items():
        print(f"{mode:<12}{r['n_saes']:>6}{r['seconds']:>9.1f}{r['tokens_seen'] / r['seconds']:>10.0f}"
              f"{r['fvu']:>10.4f}{r['peak_rss_mib']:>14.0f}")
    print(f"speed-up of one pass over one run per SAE: {rows['sequential']['seconds'] / rows['many']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
