"""``saevit demo``: the paper in miniature on the toy CLIP and the synthetic world."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import note, parse_layers, say
from sae_vit.cli.sparsity import print_sparsity
from sae_vit.cli.steer import print_steer
from sae_vit.core.errors import SaeVitError


def demo_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/demo.")] = None,
    n_images: Annotated[int, typer.Option("--n-images", min=40, help="World images to cache.")] = 2048,
    layers: Annotated[str, typer.Option("--layers", help="Toy CLIP blocks to analyse, or 'all'.")] = "2,5,8,11",
    n_tokens: Annotated[int, typer.Option("--n-tokens", min=1, help="Training tokens per SAE.")] = 400_000,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """The paper in miniature on the toy CLIP and the synthetic world: cache, train SAEs, sparsity table."""
    from sae_vit.pipeline.demo import DemoConfig, run_demo
    from sae_vit.world.toyclip import ToyClipConfig

    depth = ToyClipConfig().depth
    layer_list = parse_layers(layers)
    layer_list = list(range(depth)) if layer_list == "all" else layer_list
    if not layer_list or max(layer_list) >= depth:
        raise SaeVitError(f"--layers {layers!r} is out of range; the toy CLIP has blocks 0..{depth - 1}.")
    cfg = DemoConfig(n_images=n_images, layers=tuple(layer_list), n_tokens=n_tokens)
    start = time.perf_counter()
    result = run_demo(out, cfg, overwrite, progress=lambda msg: note(msg, "cyan"))
    print_sparsity(result.sparsity)
    if result.steer:
        print_steer(result.steer)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    say(f"demo finished in {time.perf_counter() - start:.0f} s ({steps}); everything is in {result.out}")
