"""Quickstart as a script: cache -> train -> sparsity -> an edit through splice, on the built-in toy CLIP.

    python examples/quickstart.py [--out runs/quickstart]

Everything runs offline on a CPU in a minute or two. Swap ``model="toy"`` for
``model="vit_base_patch32_clip_224.datacompxl"`` (weights from the Hugging Face Hub) and ``images=None`` for a
folder of your own images to run the same steps on real CLIP.
"""

import argparse
from pathlib import Path

import torch

import sae_vit.pipeline as api
from sae_vit.analysis import sparsity
from sae_vit.core.backbone import load_backbone, splice
from sae_vit.core.train import TrainConfig
from sae_vit.world.sources import world_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    args = parser.parse_args()

    cache_dir = args.out / "cache"
    if not (cache_dir / "manifest.json").exists():
        api.cache(out=cache_dir, model="toy", layers=[8], tokens="all", max_images=1024)
    sae_path = args.out / "layer_8_patches.safetensors"
    sae, _ = api.train(8, "patches", cache_dir, sae_path, config=TrainConfig(k=16, expansion=8),
                       n_tokens=300_000, overwrite=True)
    print("held-out metrics:", {k: round(v, 4) for k, v in sae.cfg.training.items() if isinstance(v, float)})
    table = sparsity.run([sae_path], cache_dir, out=args.out / "sparsity.csv", overwrite=True, plot=False)
    print(table.rows[["layer", "tokens", "l0", "fvu", "dead_fraction", "dense_fraction"]])

    # Suppress the SAE's most frequent latent during the forward pass; the SAE's error term is kept.
    backbone = load_backbone("toy")
    images = torch.stack([backbone.transform(item.open()) for item in world_source(n=8, seed=1).items])
    acts = backbone.capture(images, [8], tokens="patches")[8]
    top = int((sae.encode(acts) > 0).float().mean(dim=(0, 1)).argmax())
    with torch.no_grad():
        before = backbone.image_embedding(images)
        with splice(backbone, 8, lambda x: sae.edit(x, lambda f: f.index_fill(-1, torch.tensor([top]), 0.0)),
                    tokens="patches"):
            after = backbone.image_embedding(images)
    cos = torch.nn.functional.cosine_similarity(before, after).mean().item()
    print(f"suppressing latent {top} at layer 8: mean cosine(before, after) of the image embedding = {cos:.3f}")


if __name__ == "__main__":
    main()
