"""Training throughput: our trainer against EleutherAI sparsify's own training loop, and the encoder-matmul bound.

Every row runs in its own subprocess (so its peak RSS is its own) on the same activations (``dying`` in
benchmarks/_data.py) from the same initial weights, in which ``--dead`` of the latents are dead from the start
(encoder bias lowered until ``--dead-positive`` of their pre-activations are positive, too few and too small to
win a top-k slot, as the dead latents of a real run), so a trainer that runs AuxK pays for it on every step after
the first. Rows are interleaved and the whole set repeated ``--repeats`` times in
alternating order; each figure is the median step time (the first step of a run, which allocates, excluded).

* ``bound-*``: the encoder's forward matmul ``[x - b_dec | 1] @ [W_enc; b_enc]`` alone at that dtype
  (``kernels.encoder_pre``): no TopK step can be faster.
* ``ours-*``: :func:`sae_vit.core.train.train_sae` with its defaults: AuxK runs on the dead latents.
* ``ours-noaux-fp32``: the same without AuxK (``aux_coef=0``), sparsify's default.
* ``sparsify-fp32``: sparsify's ``Trainer.fit`` with its defaults (signum + schedule-free, no AuxK; eager
  decoder on the CPU; it autocasts to bf16 only on CUDA).
* ``sparsify-auxk-fp32``: the same with AuxK matched to ours (``auxk_alpha=1/32``, the same dead window).

    python benchmarks/bench_train.py                 # d_in=768, d_sae=12288, k=32, batch 4096
    python benchmarks/bench_train.py --steps 4 --repeats 1 --expansion 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import _data
import _peers
import torch

from sae_vit.core.kernels import Workspace, encoder_pre, encoder_rows
from sae_vit.core.sae import SAE, SAEConfig

CONFIGS = ("bound-fp32", "bound-bf16", "ours-fp32", "ours-bf16", "ours-noaux-fp32", "sparsify-fp32",
           "sparsify-auxk-fp32")


def initial_sae(args, data: torch.Tensor) -> SAE:
    """The shared initial weights: random unit decoder rows, encoder = decoder transpose, ``b_dec`` at the first
    batch's mean (sparsify sets it so itself), and the dead latents' encoder bias lowered until only
    ``--dead-positive`` of their pre-activations on the first batch are positive: too few and too small to win a
    top-k slot, as the dead latents of a real run (there 1-4 % of them are positive; docs/train.md)."""
    d_sae = args.expansion * args.d_in
    sae = SAE(SAEConfig(d_in=args.d_in, d_sae=d_sae, k=args.k))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    dead = torch.randperm(d_sae, generator=torch.Generator().manual_seed(1))[: round(args.dead * d_sae)]
    with torch.no_grad():
        sae.b_dec.copy_(data[: args.batch_size].mean(dim=0))
        pre = (data[: args.batch_size] - sae.b_dec) @ sae.W_enc[:, dead] + sae.b_enc[dead]
        sae.b_enc[dead] -= pre.quantile(1 - args.dead_positive, dim=0)
    return sae


def run_bound(data, init: SAE, args, dtype) -> list[float]:
    enc = encoder_rows(init.W_enc.detach(), init.b_enc.detach()).contiguous()  # the trainer's layout
    workspace = Workspace()  # the trainer's buffer, too
    times = [time.perf_counter()]
    for x in data.split(args.batch_size):
        encoder_pre(x, enc, init.b_dec.detach(), dtype, workspace)
        times.append(time.perf_counter())
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def one(args) -> dict:
    torch.set_num_threads(args.threads)
    d_sae = args.expansion * args.d_in
    data = _data.dying(args.steps * args.batch_size, seed=0, d=args.d_in, n_atoms=round(0.98 * d_sae))
    order = torch.arange(len(data))
    init = initial_sae(args, data)
    # One batch: a latent that missed one batch is dead, for both trainers (only the injected ones will be).
    window = args.batch_size
    name = args.only
    dead = float("nan")
    if name.startswith("bound"):
        steps = run_bound(data, init, args, torch.bfloat16 if name.endswith("bf16") else torch.float32)
    elif name.startswith("ours"):
        extra = {"aux_coef": 0.0} if "noaux" in name else {}
        run = _peers.run_ours(data, order, d_sae, args.k, args.batch_size, 0, sae=init, dead_tokens=window,
                              dtype=name.rsplit("-", 1)[1], **extra)
        steps, dead = run.step_s, run.dead_fraction
    else:
        extra = {"auxk_alpha": 1 / 32} if "auxk" in name else {}
        run = _peers.run_sparsify(data, order, d_sae, args.k, args.batch_size, 0, init=init,
                                  dead_tokens=window - 1, **extra)  # sparsify: dead once count > threshold
        steps, dead = run.step_s, run.dead_fraction
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": name, "step_s": statistics.median(steps[1:]), "dead": dead, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimisation steps per configuration and repeat")
    parser.add_argument("--batch-size", type=int, default=4096, help="tokens per step (a multiple of 256)")
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--dead", type=float, default=0.02, help="fraction of latents dead from the start")
    parser.add_argument("--dead-positive", type=float, default=0.02,
                        help="fraction of the dead latents' pre-activations that are positive")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the whole set")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of the rows")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one configuration (subprocess)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(one(args)))
        return
    start = time.perf_counter()
    configs = [c for c in args.configs.split(",") if c and (not c.startswith("sparsify") or _peers.have("sparsify"))]
    print(f"torch {torch.__version__}, {args.threads} threads, d_in={args.d_in}, d_sae={args.expansion * args.d_in}, "
          f"k={args.k}, batch {args.batch_size}, {100 * args.dead:.0f} % dead latents ({100 * args.dead_positive:g} % "
          f"of their pre-activations positive), {args.steps} steps x "
          f"{args.repeats} repeats" + ("" if _peers.have("sparsify") else "; sparsify not installed"), flush=True)
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(args.repeats):
        for config in configs if r % 2 == 0 else configs[::-1]:  # interleave, alternating the order
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", config], capture_output=True,
                                 text=True)
            if out.returncode:
                sys.exit(f"{config} failed:\n{out.stderr[-3000:]}")
            results[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
    tok_s = {c: args.batch_size / statistics.median(x["step_s"] for x in rs) for c, rs in results.items()}
    print(f"{'row':<20}{'tokens/s':>10}{'/bound':>8}{'/sparsify':>11}{'/sparsify-auxk':>16}{'dead %':>8}"
          f"{'peak RSS MiB':>14}")
    for config, rs in results.items():
        bound = tok_s.get(f"bound-{config.rsplit('-', 1)[1]}")
        cols = [f"{100 * tok_s[config] / bound:>7.0f}%" if bound else f"{'':>8}"]
        for peer, width in (("sparsify-fp32", 11), ("sparsify-auxk-fp32", 16)):
            ratio = config.startswith("ours") and peer in tok_s
            cols.append(f"{tok_s[config] / tok_s[peer]:>{width - 1}.2f}x" if ratio else f"{'':>{width}}")
        dead = statistics.median(x["dead"] for x in rs)
        print(f"{config:<20}{tok_s[config]:>10.0f}{''.join(cols)}{100 * dead:>8.1f}"
              f"{max(x['peak_rss_mib'] for x in rs):>14.0f}")
    print(f"wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
