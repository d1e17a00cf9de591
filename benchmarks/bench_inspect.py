"""inspect's single pass: time against the number of images and the number of features, in one run.

    python benchmarks/bench_inspect.py

Toy CLIP architecture (random weights), a random TopK SAE at layer 8. If the pass scaled with
images x features, 8x the features would cost about 8x the time; a single pass costs about the same.
"""

import time

import torch


def main() -> None:
    from sae_vit.analysis.inspect import collect
    from sae_vit.core.backbone import Backbone
    from sae_vit.core.sae import SAE, SAEConfig
    from sae_vit.world.toyclip import build_toy_vit

    torch.manual_seed(0)
    model = build_toy_vit()
    bb = Backbone.from_model(model, "toy-random", "random")
    sae = SAE(SAEConfig(d_in=128, d_sae=2048, k=32, model="toy-random", layer=8))
    images = torch.randn(1024, 3, 64, 64)

    def timed(n_images, n_features):
        def batches():
            for s in range(0, n_images, 64):
                yield torch.arange(s, min(s + 64, n_images)), images[s:s + 64]

        t0 = time.perf_counter()
        collect(bb, sae, batches, list(range(n_features)), k=16)
        return time.perf_counter() - t0

    timed(64, 8)  # warm-up
    base = timed(256, 16)
    print(f"toy CLIP architecture, layer 8, d_sae 2048, k=16 top images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"256 images,   16 features: {base:6.2f} s")
    for n_images, n_features in ((1024, 16), (256, 128), (256, 1024)):
        t = timed(n_images, n_features)
        print(f"{n_images:4d} images, {n_features:4d} features: {t:6.2f} s  ({t / base:4.1f}x; images x{n_images / 256:.0f}, "
              f"features x{n_features / 16:.0f})")


if __name__ == "__main__":
    main()
