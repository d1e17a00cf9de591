"""Caching throughput: our cache path against a plain timm forward pass with a hook, in one run.

    python benchmarks/bench_cache.py [--model vit_base_patch32_clip_224] [--layer 5] [--images 256]

Random weights (timing does not depend on them). Baseline: ``model(x)`` (all blocks and the head) with a
forward hook on ``blocks[layer]`` copying the activations. Ours: ``Backbone.capture`` which stops after the
deepest requested layer, in fp32 and under bf16 autocast. Images are random tensors already preprocessed, so
the figures are the model's, not the JPEG decoder's. Also prints peak RSS and the bf16 activations' error.
"""

import argparse
import resource
import time

import torch


def images_per_s(fn, batches, warmup=1):
    for x in batches[:warmup]:
        fn(x)
    t0 = time.perf_counter()
    n = 0
    for x in batches:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch32_clip_224")
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import timm
    import timm.data

    from sae_vit.core.backbone import Backbone

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().requires_grad_(False)
    cfg = timm.data.resolve_data_config({}, model=model)
    bb = Backbone(model=model, name=args.model, weights_id="random", transform=None)
    size = cfg["input_size"][1:]
    batches = [torch.randn(args.batch_size, 3, *size) for _ in range(max(1, args.images // args.batch_size))]

    grabbed = {}
    model.blocks[args.layer].register_forward_hook(lambda _m, _i, o: grabbed.__setitem__("x", o.clone()))

    @torch.no_grad()
    def baseline(x):
        model(x)
        return grabbed["x"]

    @torch.no_grad()
    def ours(x):
        return bb.capture(x, [args.layer], tokens="all")[args.layer]

    @torch.no_grad()
    def ours_bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bb.capture(x, [args.layer], tokens="all")[args.layer]

    x = batches[0]
    with torch.no_grad():
        ref = baseline(x).float()
        err = ((ours_bf16(x).float() - ref).norm() / ref.norm()).item()
        same = torch.equal(ours(x), ref)
    base = images_per_s(baseline, batches)
    fast = images_per_s(ours, batches)
    fast16 = images_per_s(ours_bf16, batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {args.model} (random weights), layer {args.layer}, {args.images} images, batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"baseline  full timm forward + hook, fp32 : {base:8.1f} images/s")
    print(f"sae-vit   capture (stops at layer), fp32 : {fast:8.1f} images/s  ({fast / base:.2f}x baseline; "
          f"activations identical: {same})")
    print(f"sae-vit   capture, bf16 autocast         : {fast16:8.1f} images/s  ({fast16 / base:.2f}x baseline; "
          f"relative error vs fp32 {err:.4f})")
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
