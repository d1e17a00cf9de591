"""How many of the dead latents' pre-activations are positive while they are dead, in a real training run.

bench_train.py gives its injected dead latents this share of positive pre-activations (``--dead-positive``); this
script measures it: it trains an SAE with the default recipe on a benchmark data set (``known`` or ``heavy`` of
benchmarks/_data.py) and, at every step on which some latent is dead, records how many latents are dead, the share
of them with a positive pre-activation on some token of the batch and the share of (token, dead latent)
pre-activations that are positive.

    python benchmarks/dead_positive.py --data heavy
"""

from __future__ import annotations

import argparse

import _data
import torch

from sae_vit.core import kernels
from sae_vit.core.train import TrainConfig, train_sae

SIZES = {"known": (1_000_000, 512, 6), "heavy": (500_000, 3072, 32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(SIZES), default="heavy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, d_sae, k = SIZES[args.data]
    data = getattr(_data, args.data)(n, seed=args.seed)
    stats = []
    encode = kernels.topk_encode_rows

    def spy(x, enc, b_dec, k, dtype=torch.float32, dead=None, *args, **kwargs):
        out = encode(x, enc, b_dec, k, dtype, dead, *args, **kwargs)
        if dead is not None and len(dead):
            with torch.no_grad():
                positive = kernels.encoder_pre(x, enc, b_dec)[:, dead] > 0
            stats.append((len(dead), positive.any(0).float().mean().item(), positive.float().mean().item()))
        return out

    kernels.topk_encode_rows = spy
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    train_sae(data[order].split(4096), data.shape[1], TrainConfig(d_sae=d_sae, k=k, n_tokens=n, dtype="fp32"))
    print(f"{args.data}: d_sae {d_sae}, k {k}, {n:,} tokens; {len(stats)} steps with dead latents")
    print(f"{'step':>6}{'dead':>7}{'any positive':>14}{'positive share':>16}")
    for i in range(0, len(stats), max(1, len(stats) // 12)):
        n_dead, any_pos, share = stats[i]
        print(f"{i:>6}{n_dead:>7}{100 * any_pos:>13.1f}%{100 * share:>15.2f}%")


if __name__ == "__main__":
    main()
