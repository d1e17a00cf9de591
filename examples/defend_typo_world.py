"""The typographic-attack defence on the toy CLIP and the synthetic world (PAPER.md §3, acceptance of #9).

Prints the validation sweep (layer × N), and for five test sets (our recipe as in discovery, a shifted recipe
with other size / colour / position, the held-out rendering family and its coloured variant, which no typo-SAE
training image, discovery image or validation image is drawn in, and the world's own typographic split) the
clean, attacked and control accuracy, the attack success rate and the reading-specific gain (attack gain minus
control gain) of: no defence, the SAE defence, attention-head ablation, the two prompt-side defences and the
probe direction. Discovery uses the world's train split, every choice (by reading-specific gain) the val split,
every reported number the test split.

    python examples/defend_typo_world.py                       # shipped SAE + toy CLIP
    python examples/defend_typo_world.py --sae a.safetensors --sae b.safetensors   # a layer sweep
    python examples/defend_typo_world.py --weights /tmp/wclip/candidate.safetensors  # another toy CLIP file

The same numbers: ``saevit defend-typo --eval world [--sae ...]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", action="append", help="SAE checkpoint(s); default: the shipped typo SAE.")
    parser.add_argument("--weights", help="A toy CLIP file (default: the shipped one).")
    parser.add_argument("--n-discovery", type=int, default=512)
    parser.add_argument("--n-val", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="Also write the results here.")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from sae_vit.analysis import typo
    from sae_vit.cli.typo import print_report
    from sae_vit.core.sae import SAE

    paths = args.sae or [typo.default_pair()[0]]
    saes = [(p, SAE.load(p)) for p in paths]
    bundle = typo.load_model("toy", args.weights)
    cfg = typo.EvalConfig(n_discovery=args.n_discovery, n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    start = time.perf_counter()
    report = typo.run_world_eval(bundle, saes, cfg, progress=print)
    print_report(report)
    print(f"model: {bundle.description}; layer {report.layer}, N={report.n}; {time.perf_counter() - start:.0f} s")
    for name, rows in report.results.items():
        none, sae = rows["none"], rows["sae"]
        print(f"{name}: attacked {100 * none.attacked:.1f} -> {100 * sae.attacked:.1f}, control "
              f"{100 * none.control:.1f} -> {100 * sae.control:.1f}: reading-specific gain "
              f"{100 * sae.reading_gain:+.1f} points; ASR {100 * none.asr:.1f} -> {100 * sae.asr:.1f}; "
              f"clean {100 * none.clean:.1f} -> {100 * sae.clean:.1f}")
    if args.json:
        out = {"model": report.model, "layer": report.layer, "n": report.n, "sae": report.sae_path,
               "settings": report.settings, "sweep": report.sweep,
               "results": {k: {d: m.as_dict() for d, m in v.items()} for k, v in report.results.items()}}
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
