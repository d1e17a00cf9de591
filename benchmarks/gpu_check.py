"""The GPU path in one script: device tests, then training, caching and steering throughput on one device.

    python benchmarks/gpu_check.py                        # CUDA, real size: d_in 768, d_sae 49,152, k 32 (< 8 min)
    python benchmarks/gpu_check.py --device cpu --small   # what CI runs (seconds), so the script cannot rot

1. ``tests/test_train_device.py`` with ``SAEVIT_TEST_DEVICES=<device>`` (the tests that take a device).
2. Training: the encoder-matmul bound, our trainer (fp32 and bf16) and EleutherAI sparsify with its defaults
   (on CUDA its Triton decoder and bf16 autocast), the same tokens and initial weights, median step time.
3. Caching: ``Backbone.capture`` (stops at the layer) against a full timm forward with a hook.
4. Steering: batched steer-score of SAE features.

Prints one line per figure with its ratio; exits non-zero if a section failed (each section still runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SIZES = {  # d_in, d_sae, k, batch, steps; cache model and images; steer features
    "real": {"d_in": 768, "d_sae": 49_152, "k": 32, "batch": 4096, "steps": 12, "model": "vit_base_patch32_clip_224",
             "images": 512, "features": 64},
    "small": {"d_in": 64, "d_sae": 512, "k": 8, "batch": 512, "steps": 4, "model": "toy", "images": 16,
              "features": 2},
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_tests(device: str, size: dict) -> None:
    env = {**os.environ, "SAEVIT_TEST_DEVICES": device}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_train_device.py")], env=env, cwd=ROOT, capture_output=True,
                         text=True)
    print("  " + out.stdout.strip().splitlines()[-1])
    if out.returncode:
        print(out.stdout[-3000:])
        raise RuntimeError("device tests failed")


def training(device: str, size: dict) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _peers

    from sae_vit.core.kernels import Workspace, encoder_pre, encoder_rows
    from sae_vit.core.sae import SAE, SAEConfig

    d_in, d_sae, k, batch, steps = (size[n] for n in ("d_in", "d_sae", "k", "batch", "steps"))
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(4 * d_in, d_in, generator=g)
    idx = torch.randint(0, 4 * d_in, (steps * batch, k), generator=g)
    data = torch.nn.functional.embedding_bag(idx, atoms / atoms.norm(dim=1, keepdim=True), mode="sum",
                                             per_sample_weights=1 + torch.rand(steps * batch, k, generator=g))
    data = data.to(device)
    order = torch.arange(len(data))
    init = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    init.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        init.b_dec.copy_(data[:batch].mean(dim=0).cpu())
    tok_s = {}
    for dtype in (torch.float32, torch.bfloat16):
        enc = encoder_rows(init.W_enc.detach(), init.b_enc.detach()).contiguous().to(device)
        workspace = Workspace()  # the trainer's buffer
        times = []
        for x in data.split(batch):
            sync(device)
            t0 = time.perf_counter()
            encoder_pre(x, enc, init.b_dec.to(device), dtype, workspace)
            sync(device)
            times.append(time.perf_counter() - t0)
        tok_s["bound-fp32" if dtype == torch.float32 else "bound-bf16"] = batch / statistics.median(times[1:])
    for dtype in ("fp32", "bf16"):
        sae = SAE.from_tensors(init.cfg, dict(init.state_dict()))
        run = _peers.run_ours(data, order, d_sae, k, batch, 0, device=device, sae=sae, dtype=dtype)
        tok_s[f"ours-{dtype}"] = batch / statistics.median(run.step_s[1:])
    if _peers.have("sparsify"):
        run = _peers.run_sparsify(data, order, d_sae, k, batch, 0, init=init)
        tok_s["sparsify"] = batch / statistics.median(run.step_s[1:])
    for name, rate in tok_s.items():
        bound = tok_s.get(f"bound-{name.split('-')[-1]}") if name.startswith("ours") else None
        extra = f"  {100 * rate / bound:.0f} % of its bound" if bound else ""
        if "sparsify" in tok_s and name.startswith("ours"):
            extra += f"  {rate / tok_s['sparsify']:.2f}x sparsify"
        print(f"  {name:<14}{rate:>12,.0f} tokens/s{extra}")


def caching(device: str, size: dict) -> None:
    from sae_vit.core.backbone import Backbone, load_backbone

    if size["model"] == "toy":
        bb = load_backbone("toy", device=device)
    else:
        import timm

        model = timm.create_model(size["model"], pretrained=False)
        bb = Backbone.from_model(model, size["model"], "random", device=device)
    model = bb.model
    n_side = 64 if size["model"] == "toy" else 224
    n = min(32, size["images"])
    batches = [torch.randn(n, 3, n_side, n_side, device=device) for _ in range(max(2, size["images"] // n))]
    layer = bb.n_layers // 2

    def rate(fn) -> float:
        fn(batches[0])
        sync(device)
        t0 = time.perf_counter()
        for x in batches:
            fn(x)
        sync(device)
        return n * len(batches) / (time.perf_counter() - t0)

    with torch.no_grad():
        full = rate(model)
        ours = rate(lambda x: bb.capture(x, [layer], "resid_post", "all"))
    print(f"  full forward {full:,.0f} images/s; capture to layer {layer}: {ours:,.0f} images/s ({ours / full:.2f}x)")


def steering(device: str, size: dict) -> None:
    import torch.nn.functional as F

    from sae_vit.analysis.steer import build_context, sae_family, steer_batched
    from sae_vit.core.backbone import load_backbone
    from sae_vit.core.sae import SAE, SAEConfig

    bb = load_backbone("toy", device=device)
    layer = 8
    sae = SAE(SAEConfig(d_in=bb.d_model, d_sae=16 * bb.d_model, k=32, model="toy", layer=layer)).to(device)
    images = torch.randn(size["images"], 3, 64, 64, device=device)
    text = F.normalize(torch.randn(20, bb.model.num_classes, device=device), dim=-1)
    features = torch.arange(size["features"])
    sync(device)
    t0 = time.perf_counter()
    ctx = build_context(bb, layer, "resid_post", images, text, "all", 100.0)
    fam, _ = sae_family(sae, ctx)
    steer_batched(ctx, fam.directions(features), fam.current(features), fam.scale, [-5, 0, 5, 10, 20])
    sync(device)
    n = 5 * len(features)
    print(f"  {n / (time.perf_counter() - t0):,.1f} feature-strengths/s ({len(features)} features x 5 strengths x "
          f"{size['images']} images, toy CLIP)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CI on a CPU)")
    args = parser.parse_args()
    size = SIZES["small" if args.small else "real"]
    if args.small and args.device == "cpu":
        torch.set_num_threads(1)  # tiny sizes: one thread is as fast and immune to a busy machine's spin-waits
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run with --device cpu --small")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"gpu_check on {args.device} ({name}), torch {torch.__version__}, {'small' if args.small else 'real'} size:"
          f" d_in {size['d_in']}, d_sae {size['d_sae']}, k {size['k']}, batch {size['batch']}")
    failed = []
    for title, fn in (("device tests", device_tests), ("training", training), ("caching", caching),
                      ("steering", steering)):
        print(f"{title}:", flush=True)
        t0 = time.perf_counter()
        try:
            fn(args.device, size)
        except Exception:  # report and go on: one broken section should not hide the others' figures
            traceback.print_exc()
            failed.append(title)
        print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
    if failed:
        sys.exit(f"gpu_check: failed: {', '.join(failed)}")
    print("gpu_check: all sections passed")


if __name__ == "__main__":
    main()
