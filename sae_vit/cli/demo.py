"""``saevit demo``: the paper in miniature on the toy CLIP and the synthetic world."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import note, parse_layers, result, say
from sae_vit.cli.sparsity import print_sparsity
from sae_vit.cli.steer import print_steer
from sae_vit.core.errors import SaeVitError


def demo_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/demo.")] = None,
    n_images: Annotated[int, typer.Option("--n-images", min=40, help="World images to cache.")] = 2048,
    layers: Annotated[str, typer.Option("--layers", help="Toy CLIP blocks to analyse, or 'all'.")] = "2,5,8,11",
    n_tokens: Annotated[int, typer.Option("--n-tokens", min=1, help="Training tokens per SAE.")] = 400_000,
    cls_images: Annotated[int, typer.Option(
        "--cls-images", min=0, help="World images for the CLS-only cache the CLS SAEs train on (0: the main "
                                    "cache's images).")] = 8192,
    relu_l1: Annotated[float, typer.Option(
        "--relu-l1", min=0, help="L1 coefficient of the ReLU+L1 SAEs that judge the sparsity claim (0 skips "
                                 "them).")] = 1e-3,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Recache and retrain. Without it, a re-run keeps the demo's cache and SAEs when they "
                            "match these settings and regenerates the tables, plots and pages.")] = False,
    as_json: opt.Json = False,
) -> None:
    """The paper in miniature on the toy CLIP and the synthetic world: cache, SAEs, sparsity, steerability,
    suppression, typographic defence and the feature browser, summed up in report.html."""
    from sae_vit.pipeline.demo import DemoConfig, run_demo
    from sae_vit.world.toyclip import ToyClipConfig

    depth = ToyClipConfig().depth
    layer_list = parse_layers(layers)
    layer_list = list(range(depth)) if layer_list == "all" else layer_list
    if not layer_list or max(layer_list) >= depth:
        raise SaeVitError(f"--layers {layers!r} is out of range; the toy CLIP has blocks 0..{depth - 1}.")
    cfg = DemoConfig(n_images=n_images, layers=tuple(layer_list), n_tokens=n_tokens, cls_images=cls_images,
                     relu_l1=relu_l1)
    start = time.perf_counter()
    res = run_demo(out, cfg, overwrite, progress=lambda msg: note(msg, "cyan"))
    print_sparsity(res.sparsity)
    _print_density(res.results["sparsity"])
    if res.steer:
        print_steer(res.steer)
    _print_suppress(res.results.get("suppress"))
    _print_typo(res.results.get("typo"))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items())
    result(report=str(res.report), out=str(res.out), timings=res.timings, results=res.results)
    say(f"demo finished in {time.perf_counter() - start:.0f} s ({steps}); everything is in {res.out}")
    say(f"open {res.report} in a browser")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _print_density(r: dict) -> None:
    """The sparsity claim's contrasts (ReLU+L1 L0) with their bootstrap intervals and the rule."""
    for c in r.get("patches_vs_cls") or []:
        say(f"ReLU+L1 L0, layer {c['layer']}: patches / CLS = {c['ratio']:.2f} (95 % {c['lo']:.2f}-{c['hi']:.2f})"
            + (" denser" if c["holds"] else " not clearly denser"))
    d = r.get("cls_depth")
    if d:
        say(f"ReLU+L1 L0, CLS layer {d['last']} / layer {d['first']} = {d['ratio']:.2f} (95 % {d['lo']:.2f}-"
            f"{d['hi']:.2f})" + (" denser with depth" if d["holds"] else " not clearly denser with depth"))
    if r.get("patches_vs_cls") or d:
        say(f"(a ratio counts when its whole bootstrap interval exceeds {r['margin']:.2f})")


def _print_suppress(r: dict | None) -> None:
    if r:
        zs = {x["method"]: x for x in r["table"] if x["eval"] == "zero_shot"}
        sae = zs["sae"]
        say(f"suppress (Waterbirds-like, zero-shot, test): worst group {_pct(zs['none']['test_worst'])} -> "
            f"{_pct(sae['test_worst'])} with {sae['n']:.0f} features of the layer-{sae['layer']:.0f} SAE zeroed "
            f"(random features: {_pct(zs['random']['test_worst'])}) -> {r['csv']}")


def _print_typo(r: dict | None) -> None:
    if r:
        a, b = r["metrics"]["none"], r["metrics"]["sae"]
        say(f"defend-typo (world typographic split, {r['n_images']} images): attacked {_pct(a['attacked'])} -> "
            f"{_pct(b['attacked'])}, clean {_pct(a['clean'])} -> {_pct(b['clean'])}, control {_pct(a['control'])} "
            f"-> {_pct(b['control'])}, attack success {_pct(a['asr'])} -> {_pct(b['asr'])} ({r['defence']})")
        if b.get("reading_gain") is not None:
            say(f"defend-typo reading-specific gain (attack gain - control gain): {100 * b['reading_gain']:+.1f} points")
