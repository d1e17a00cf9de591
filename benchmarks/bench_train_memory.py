"""Peak memory of training does not grow with the cache: peak RSS of `api.train` on caches 1x and 4x the size.

Writes synthetic caches in the cache format (fp16 shards, d_model 768, 50 tokens per image), then trains the
same SAE for the same number of tokens on each, every run in its own subprocess, and prints peak RSS (ru_maxrss).
The reader memory-maps shards and holds ``buffer_shards`` of them at a time, so the peak should be flat.

    python benchmarks/bench_train_memory.py                  # 1x = 8 shards (~160 MB), 4x = 32 shards (~630 MB)
    python benchmarks/bench_train_memory.py --shards 16 --factor 8
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

D_MODEL, TOKENS_PER_IMAGE = 768, 50


def write_synthetic_cache(root: Path, n_shards: int, images_per_shard: int, layers: tuple[int, ...] = (0,)) -> int:
    """A cache directory with ``n_shards`` shards of random activations per layer; returns its bytes on disk."""
    from sae_vit.io.cache import (
        CACHE_FORMAT_VERSION,
        MANIFEST,
        _refresh_totals,
        _save_shard,
        shard_path,
        write_json_atomic,
    )

    for layer in layers:
        (root / f"layer_{layer}").mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": CACHE_FORMAT_VERSION, "model": "synthetic", "weights": "synthetic", "layers": list(layers),
        "site": "resid_post", "tokens": "all", "dtype": "float16", "d_model": D_MODEL, "has_cls": True,
        "n_patches": TOKENS_PER_IMAGE - 1, "tokens_per_image": TOKENS_PER_IMAGE, "images_per_shard": images_per_shard,
        "n_images": n_shards * images_per_shard, "source": {"kind": "synthetic"}, "shards": [], "complete": True,
    }
    g = torch.Generator().manual_seed(0)
    for i in range(n_shards):
        img = torch.arange(i * images_per_shard, (i + 1) * images_per_shard).repeat_interleave(TOKENS_PER_IMAGE)
        tok = torch.arange(TOKENS_PER_IMAGE).repeat(images_per_shard)
        norm_sum = {}
        for layer in layers:
            acts = torch.randn(len(img), D_MODEL, generator=g).half()
            _save_shard(shard_path(root, layer, i), {"acts": acts, "image_index": img, "token_index": tok})
            norm_sum[str(layer)] = float(acts.float().norm(dim=1).sum())
        manifest["shards"].append({"index": i, "n_images": images_per_shard, "n_tokens": len(img),
                                   "norm_sum": norm_sum, "skipped": []})
    _refresh_totals(manifest)
    write_json_atomic(root / MANIFEST, manifest)
    return sum(p.stat().st_size for p in root.rglob("*.safetensors"))


def train_once(cache: str, n_tokens: int) -> dict:
    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    start = time.perf_counter()
    cfg = TrainConfig(expansion=4, k=32, batch_size=4096, device="cpu")
    sae, _ = api.train(0, "all", cache, Path(cache) / "sae.safetensors", cfg, n_tokens=n_tokens, overwrite=True)
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - start, "tokens_seen": sae.cfg.training["tokens_seen"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8, help="shards of the 1x cache")
    parser.add_argument("--factor", type=int, default=4, help="size of the large cache relative to the 1x one")
    parser.add_argument("--images-per-shard", type=int, default=256)
    parser.add_argument("--n-tokens", type=int, default=200_000, help="training tokens (the same for both)")
    parser.add_argument("--train", default=None, help=argparse.SUPPRESS)  # subprocess: train on this cache
    args = parser.parse_args()
    if args.train:
        print(json.dumps(train_once(args.train, args.n_tokens)))
        return
    print(f"torch {torch.__version__}, d_model {D_MODEL}, {args.images_per_shard * TOKENS_PER_IMAGE} tokens per "
          f"shard, {args.n_tokens} training tokens, d_sae {4 * D_MODEL}, batch 4096")
    print(f"{'cache':<8}{'shards':>8}{'tokens':>12}{'size MiB':>10}{'peak RSS MiB':>14}{'train s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for mult in (1, args.factor):
            root = Path(tmp) / f"cache_{mult}x"
            size = write_synthetic_cache(root, args.shards * mult, args.images_per_shard)
            out = subprocess.run([sys.executable, __file__, "--train", str(root), "--n-tokens", str(args.n_tokens)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            n_tok = args.shards * mult * args.images_per_shard * TOKENS_PER_IMAGE
            print(f"{mult}x{'':<6}{args.shards * mult:>8}{n_tok:>12}{size / 2**20:>10.0f}{r['peak_rss_mib']:>14.0f}"
                  f"{r['seconds']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
