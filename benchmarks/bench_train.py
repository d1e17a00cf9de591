"""Training throughput: our TopK trainer against a plain dense PyTorch TopK step and the encoder-matmul bound.

Every configuration runs in its own subprocess (so its peak RSS is its own), on the same synthetic
sparse-dictionary activations, with the same optimiser settings; configurations are interleaved and the whole
set repeated ``--repeats`` times, and each figure is the median step time (the first step, which allocates,
is excluded). Rows:

* ``plain-*``: a minimal dense TopK SAE step (dense encoder, TopK, dense decoder, MSE, AdamW) under fp32 or
  bf16 autocast: the baseline.
* ``ours-*``: :func:`sae_vit.core.train.train_sae` with its defaults (AuxK runs only while latents are dead).
* ``ours-auxk-*``: the same with every latent that missed one batch declared dead, so AuxK runs every step
  (the worst case).
* ``bound-*``: the encoder's forward matmul ``(x - b_dec) @ W_enc + b_enc`` alone at that dtype: no TopK
  step can be faster, so ``ours / bound`` says how close to it we are.
* ``sparsify``/``sae-lens``: a peer trainer's step, when installed (hook kept; not installed here).

    python benchmarks/bench_train.py                 # d_in=768, d_sae=12288, k=32, batch 4096, ~2-3 min on 2 idle cores
    python benchmarks/bench_train.py --steps 6 --repeats 1 --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from sae_vit.core.metrics import fvu
from sae_vit.core.train import TrainConfig, train_sae

N_EVAL = 4096
CONFIGS = ("bound-fp32", "bound-bf16", "ours-fp32", "ours-bf16", "ours-auxk-fp32", "ours-auxk-bf16",
           "plain-fp32", "plain-bf16", "sparsify-bf16", "sae-lens-fp32")


def synthetic(n: int, d: int, n_atoms: int, active: int, seed: int) -> torch.Tensor:
    """[n, d] activations: ``active`` random atoms of a fixed random unit dictionary with weights in [1, 2]."""
    dictionary = torch.randn(n_atoms, d, generator=torch.Generator().manual_seed(1234))
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_atoms, (n, active), generator=g)
    coef = 1 + torch.rand(n, active, generator=g)
    # embedding_bag sums the rows without materialising [n, active, d] (which would dominate peak RSS).
    return torch.nn.functional.embedding_bag(idx, dictionary, per_sample_weights=coef, mode="sum")


class PlainTopK(nn.Module):
    """The minimal reference: dense encoder, TopK, dense decoder; no normalisation, AuxK or bookkeeping."""

    def __init__(self, d_in: int, d_sae: int, k: int):
        super().__init__()
        w = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(0))
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu()) @ self.W_dec + self.b_dec


def run_plain(data, eval_x, args, bf16: bool, lr: float) -> tuple[list[float], float]:
    model = PlainTopK(args.d_in, args.expansion * args.d_in, args.k)
    with torch.no_grad():
        model.b_dec.copy_(data[: args.batch_size].mean(dim=0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    times = [time.perf_counter()]
    for x in data.split(args.batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = (model(x).float() - x).pow(2).sum(dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    with torch.no_grad():
        fvu_value = fvu(eval_x, model(eval_x))
    return [b - a for a, b in zip(times, times[1:], strict=False)], fvu_value


def run_ours(data, eval_x, args, bf16: bool, lr: float, auxk_every_step: bool) -> tuple[list[float], float]:
    cfg = TrainConfig(
        expansion=args.expansion, k=args.k, lr=lr, batch_size=args.batch_size, n_tokens=len(data),
        warmup_steps=0, schedule="constant", dtype="bf16" if bf16 else "fp32", device="cpu", log_every=1,
        dead_tokens=args.batch_size if auxk_every_step else None,
    )
    times = [time.perf_counter()]
    sae = train_sae(data.split(args.batch_size), args.d_in, cfg, eval_acts=eval_x,
                    progress=lambda state: times.append(time.perf_counter()))
    return [b - a for a, b in zip(times, times[1:], strict=False)], sae.cfg.training["fvu"]


def run_bound(data, eval_x, args, bf16: bool, lr: float) -> tuple[list[float], float]:
    """The encoder's forward matmul alone, as the trainer issues it (``kernels.encoder_pre``)."""
    from sae_vit.core.kernels import encoder_pre

    d_sae = args.expansion * args.d_in
    g = torch.Generator().manual_seed(0)
    W_enc, b_enc, b_dec = torch.randn(args.d_in, d_sae, generator=g), torch.zeros(d_sae), data[:1024].mean(dim=0)
    dtype = torch.bfloat16 if bf16 else torch.float32
    times = [time.perf_counter()]
    for x in data.split(args.batch_size):
        encoder_pre(x, W_enc, b_enc, b_dec, dtype)
        times.append(time.perf_counter())
    return [b - a for a, b in zip(times, times[1:], strict=False)], float("nan")


def run_peer(name: str):
    """Hook for a peer trainer's step (EleutherAI sparsify, SAELens): fills in when the package is installed."""
    module = {"sparsify": "sparsify", "sae-lens": "sae_lens"}[name]
    try:
        __import__(module)
    except ImportError:
        return None
    raise NotImplementedError(f"{module} is installed: add its TopK training step here to compare.")


def one(args) -> dict:
    torch.set_num_threads(args.threads)
    d_sae = args.expansion * args.d_in
    trainer, precision = args.only.rsplit("-", 1)
    if trainer in ("sparsify", "sae-lens"):
        return {"config": args.only, "missing": run_peer(trainer) is None}
    data = synthetic(args.steps * args.batch_size, args.d_in, 4 * args.d_in, args.k, seed=0)
    eval_x = synthetic(N_EVAL, args.d_in, 4 * args.d_in, args.k, seed=1)
    # One rate for all. The default is higher than the trainer's "auto" (2e-4 / sqrt(d_sae / 2**14)) so that a
    # short run moves far enough from the initialisation for the FVU column to mean something.
    lr = args.lr or 2e-4 / math.sqrt(d_sae / 2**14)
    bf16 = precision == "bf16"
    if trainer == "plain":
        steps, fvu_value = run_plain(data, eval_x, args, bf16, lr)
    elif trainer == "bound":
        steps, fvu_value = run_bound(data, eval_x, args, bf16, lr)
    else:
        steps, fvu_value = run_ours(data, eval_x, args, bf16, lr, auxk_every_step=trainer == "ours-auxk")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": args.only, "step_s": statistics.median(steps[1:]), "fvu": fvu_value, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="optimisation steps per configuration and repeat")
    parser.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate for all (0: the trainer's auto)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the whole set")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of the rows")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one configuration (subprocess)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(one(args)))
        return
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} threads, d_in={args.d_in}, d_sae={args.expansion * args.d_in}, "
          f"k={args.k}, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, lr {args.lr}")
    base = [a for a in sys.argv[1:]]
    configs = [c for c in args.configs.split(",") if c]
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(args.repeats):
        for config in configs if r % 2 == 0 else configs[::-1]:  # interleave, alternating the order
            out = subprocess.run([sys.executable, __file__, *base, "--only", config], capture_output=True,
                                 text=True, check=True)
            results[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
    tok_s = {c: args.batch_size / statistics.median(x["step_s"] for x in rs)
             for c, rs in results.items() if "step_s" in rs[0]}
    print(f"{'row':<16}{'tokens/s':>10}{'/plain-fp32':>13}{'/bound':>9}{'held-out FVU':>14}{'peak RSS MiB':>14}")
    for config, rs in results.items():
        if "missing" in rs[0]:
            print(f"{config:<16}  not installed (hook: run_peer)")
            continue
        precision = config.rsplit("-", 1)[1]
        vs_plain = tok_s[config] / tok_s["plain-fp32"] if "plain-fp32" in tok_s else float("nan")
        bound = tok_s.get(f"bound-{precision}")
        vs_bound = f"{100 * tok_s[config] / bound:>8.0f}%" if bound else f"{'':>9}"
        fvu_value = statistics.median(x["fvu"] for x in rs)
        peak = max(x["peak_rss_mib"] for x in rs)
        print(f"{config:<16}{tok_s[config]:>10.0f}{vs_plain:>12.2f}x{vs_bound}{fvu_value:>14.4f}{peak:>14.0f}")
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
