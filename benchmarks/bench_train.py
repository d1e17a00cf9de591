"""Training throughput: our trainer step against a plain dense PyTorch TopK SAE step, fp32 and bf16.

Both train on the same synthetic sparse-dictionary activations (d_in=768) with the same optimiser (AdamW,
same learning rate); each configuration runs in its own subprocess so its peak RSS is its own. Prints tokens/s
(the first step, which allocates, is excluded), the held-out FVU each reaches, and peak RSS.

    python benchmarks/bench_train.py                       # defaults: 20 steps of 1024 tokens, ~3 min on 2 cores
    python benchmarks/bench_train.py --steps 50 --batch-size 4096
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch
from torch import nn

from sae_vit.metrics import fvu
from sae_vit.train import TrainConfig, train_sae

N_EVAL = 4096


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


def run_plain(data, eval_x, args, bf16: bool, lr: float) -> tuple[float, float]:
    model = PlainTopK(args.d_in, args.expansion * args.d_in, args.k)
    with torch.no_grad():
        model.b_dec.copy_(data[: args.batch_size].mean(dim=0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    times = []
    for x in data.split(args.batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = (model(x).float() - x).pow(2).sum(dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    with torch.no_grad():
        fvu_value = fvu(eval_x, model(eval_x))
    return args.batch_size * (len(times) - 1) / (times[-1] - times[0]), fvu_value


def run_ours(data, eval_x, args, bf16: bool, lr: float) -> tuple[float, float]:
    cfg = TrainConfig(
        expansion=args.expansion, k=args.k, lr=lr, batch_size=args.batch_size, n_tokens=len(data),
        warmup_steps=0, schedule="constant", dtype="bf16" if bf16 else "fp32", device="cpu", log_every=1,
        dead_tokens=args.batch_size,  # so AuxK is active from the second step: the benchmark pays for it
    )
    times = []
    sae = train_sae(data.split(args.batch_size), args.d_in, cfg, eval_acts=eval_x,
                    progress=lambda state: times.append(time.perf_counter()))
    return args.batch_size * (len(times) - 1) / (times[-1] - times[0]), sae.cfg.training["fvu"]


def one(args) -> dict:
    torch.set_num_threads(args.threads)
    d_sae = args.expansion * args.d_in
    data = synthetic(args.steps * args.batch_size, args.d_in, 4 * args.d_in, args.k, seed=0)
    eval_x = synthetic(N_EVAL, args.d_in, 4 * args.d_in, args.k, seed=1)
    # One rate for both. The default is higher than the trainer's "auto" (2e-4 / sqrt(d_sae / 2**14)) so that a
    # 20-step run moves far enough from the initialisation for the FVU comparison to mean something.
    lr = args.lr or 2e-4 / math.sqrt(d_sae / 2**14)
    trainer, precision = args.only.split("-")
    fn = run_ours if trainer == "ours" else run_plain
    tok_s, fvu_value = fn(data, eval_x, args, precision == "bf16", lr)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": args.only, "tokens_per_s": tok_s, "fvu": fvu_value, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimisation steps per configuration")
    parser.add_argument("--batch-size", type=int, default=1024, help="tokens per step")
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate for both (0: the trainer's auto)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one configuration (subprocess)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(one(args)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, d_in={args.d_in}, d_sae={args.expansion * args.d_in}, "
          f"k={args.k}, batch {args.batch_size}, {args.steps} steps, lr {args.lr}")
    print(f"{'trainer':<18}{'tokens/s':>12}{'held-out FVU':>15}{'peak RSS MiB':>15}")
    base = [a for a in sys.argv[1:]]
    for config in ("plain-fp32", "ours-fp32", "plain-bf16", "ours-bf16"):
        out = subprocess.run([sys.executable, __file__, *base, "--only", config], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{config:<18}{r['tokens_per_s']:>12.0f}{r['fvu']:>15.4f}{r['peak_rss_mib']:>15.0f}", flush=True)


if __name__ == "__main__":
    main()
