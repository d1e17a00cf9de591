"""Steering throughput: the batched steer-score against the naive one-feature-at-a-time splice loop.

    python benchmarks/bench_steer.py [--features 16] [--images 32] [--layer 8]

Both compute the same Δp (checked here) for the toy CLIP's architecture (random weights; timing does not
depend on them) with a random TopK SAE at ``--layer``. Naive: for each feature and strength, two full forward
passes through ``splice`` (steered, and the unsteered reference). Batched: activations below the layer
computed once, the blocks after it run on (feature x strength x image) batches.
"""

import argparse
import resource
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--alphas", default="-20,-5,0,5,10,20,50,150")
    args = parser.parse_args()

    from sae_vit.analysis.steer import build_context, naive_steer, sae_family, steer_batched
    from sae_vit.core.backbone import Backbone
    from sae_vit.core.sae import SAE, SAEConfig
    from sae_vit.world.toyclip import build_toy_vit

    torch.manual_seed(0)
    model = build_toy_vit()
    bb = Backbone.from_model(model, "toy-random", "random")
    sae = SAE(SAEConfig(d_in=bb.d_model, d_sae=16 * bb.d_model, k=32, model="toy-random", layer=args.layer))
    images = torch.randn(args.images, 3, 64, 64)
    text = F.normalize(torch.randn(20, model.num_classes), dim=-1)
    alphas = [float(a) for a in args.alphas.split(",")]
    features = torch.arange(args.features)

    t0 = time.perf_counter()
    ctx = build_context(bb, args.layer, "resid_post", images, text, "all", 100.0)
    fam, _ = sae_family(sae, ctx)
    fast = steer_batched(ctx, fam.directions(features), fam.current(features), fam.scale, alphas)
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    slow = torch.stack([torch.stack([naive_steer(bb, sae, args.layer, images, text, int(f), a) for a in alphas])
                        for f in features])
    t_slow = time.perf_counter() - t0
    err = (fast - slow).abs().max().item()
    assert fast.abs().max() > 1e-3, "steering did not move the output; the comparison would be vacuous"
    n = args.features * len(alphas)
    print(f"toy CLIP architecture, layer {args.layer}, {args.features} features x {len(alphas)} strengths x "
          f"{args.images} images, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"naive splice loop : {t_slow:7.2f} s  ({n / t_slow:7.1f} feature-strengths/s)")
    print(f"batched           : {t_fast:7.2f} s  ({n / t_fast:7.1f} feature-strengths/s)  "
          f"speed-up {t_slow / t_fast:.1f}x; max |Δp difference| {err:.2e}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
