"""Steerability on the toy CLIP with a larger vocabulary: 144 scene captions instead of 19 concept words.

    python examples/steer_composite_vocab.py --root runs/steer_layers --layers 7 --decide-at 20,150

Run examples/steer_layers.py with the same --root first (it caches the world and trains one SAE per block).
The vocabulary is every "a {colour} {object} on {background}." caption of the world (6 colours x 8 objects x
3 backgrounds), embedded by the toy's text tower and written as a --text-embeddings file; steer-score then
scores 256 sampled features, the 64 residual neurons and 256 random directions at each strength (relative
units; a flat vocabulary, decided at that alpha against the null edits), and this prints the steerable
fractions, the S distribution per family and the most common targets.
"""

import argparse
from pathlib import Path

import pandas as pd

from sae_vit.analysis.steer import SteerConfig, score_saes
from sae_vit.core.text import TextHead
from sae_vit.world import scenes as world
from sae_vit.world.toyclip import toy_text_head


def captions() -> list[str]:
    out = []
    for colour in world.COLOURS:
        article = "an" if colour[0] in "aeiou" else "a"
        out += [f"{article} {colour} {obj} on {bg}." for obj in world.SHAPES + world.VEHICLES for bg in world.BACKGROUNDS]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/steer_layers"))
    parser.add_argument("--layers", default="7")
    parser.add_argument("--decide-at", default="20,150")
    parser.add_argument("--probe-images", type=int, default=48)
    parser.add_argument("--max-features", type=int, default=256)
    args = parser.parse_args()

    vocab = captions()
    emb_file = TextHead.save_embeddings(args.root / "composite_vocab.safetensors", vocab,
                                        toy_text_head().embed(vocab, templates=["{}"]))
    print(f"{len(vocab)} captions -> {emb_file}")
    for layer in [int(v) for v in args.layers.split(",")]:
        sae = args.root / "saes" / f"layer_{layer}" / "all" / "sae.safetensors"
        for alpha in [float(v) for v in args.decide_at.split(",")]:
            out = args.root / "steer_composite" / f"layer_{layer}_alpha_{alpha:g}"
            report = score_saes([sae], model="toy", text_embeddings=emb_file, n_images=args.probe_images,
                                     config=SteerConfig(alphas=(alpha,), decide_at=None), max_features=args.max_features,
                                     random_control=args.max_features, out=out, overwrite=True)[0]
            kinds = report.summary["kinds"]
            print(f"block {layer}, alpha {alpha:g}: " + ", ".join(
                f"{kind} {k['steerable']}/{k['scored']} ({100 * k['fraction']:.1f} %, {k['distinct_targets']} targets)"
                for kind, k in kinds.items()))
            print("nulls:", {k: round(report.summary["nulls"][k]["S"], 3) for k in ("null_noise", "null_erase",
                                                                                   "null_erase_full")})
            units = pd.read_csv(next(out.glob("steer_layer*.csv")))
            print(units.groupby("kind").S.describe(percentiles=[0.5, 0.9])[["mean", "50%", "90%", "max"]])


if __name__ == "__main__":
    main()
