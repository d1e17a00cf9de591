"""``saevit sparsity``: the paper's table of L0, FVU, MSE, dead and dense fractions per layer and token selection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sae_vit.cli._options import SAE_HELP, OverwriteOpt
from sae_vit.cli._ui import note, out_console, parse_layers, parse_names, plain, say


def sparsity_cmd(
    saes: Annotated[list[str] | None, typer.Argument(
        help=f"SAEs: each {SAE_HELP}; a folder of several is searched for *.safetensors. "
             "Default: <workdir>/saes.")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Evaluate on this cache's held-out images (default: <workdir>/cache when present).")] = None,
    grid: Annotated[bool, typer.Option(
        "--grid", help="Train one SAE per layer x token selection of the cache first (missing ones only).")] = False,
    layers: Annotated[str | None, typer.Option("--layers", help="With --grid: layers (default: all cached).")] = None,
    tokens: Annotated[str, typer.Option("--tokens", help="With --grid: token selections.")] = "cls,patches,all",
    n_tokens: Annotated[int | None, typer.Option(
        "--n-tokens", min=1, help="With --grid: training tokens per SAE.")] = None,
    architecture: Annotated[str, typer.Option("--architecture", help="With --grid: topk or relu.")] = "topk",
    k: Annotated[int, typer.Option("--k", min=1, help="With --grid: active latents (topk).")] = 32,
    l1_coefficient: Annotated[float, typer.Option("--l1-coefficient", help="With --grid: L1 weight (relu).")] = 8e-5,
    expansion: Annotated[int, typer.Option("--expansion", min=1, help="With --grid: d_sae / d_in.")] = 16,
    out: Annotated[Path | None, typer.Option("--out", help="CSV path. Default: <workdir>/sparsity.csv.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Also write a PNG of L0 by layer.")] = True,
    overwrite: OverwriteOpt = False,
) -> None:
    """Table of L0, FVU, MSE, dead % and dense % per layer and token selection (the paper's sparsity analysis)."""
    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    config = TrainConfig(architecture=architecture, k=k, l1_coefficient=l1_coefficient, expansion=expansion)
    config.validate()
    layer_list = parse_layers(layers)
    result = api.sparsity(saes, cache, grid, None if layer_list == "all" else layer_list, parse_names(tokens),
                          n_tokens, out, plot, overwrite, progress=note, config=config)
    print_sparsity(result)


def print_sparsity(result) -> None:
    """The table of a :class:`~sae_vit.analysis.sparsity.SparsityResult`; columns equal for every SAE go into the
    title, so the table fits a terminal."""
    from rich.table import Table

    rows = result.rows
    same = {c: rows[c].iloc[0] for c in ("site", "architecture", "d_sae", "evaluated_on") if rows[c].nunique() == 1}
    title = "SAE sparsity (held-out tokens" + "".join(f"; {k} {v}" for k, v in same.items()) + ")"
    table = Table(title=plain(title)[0])
    cols = [("layer", "layer"), ("tokens", "tokens"), ("site", "site"), ("arch", "architecture"),
            ("d_sae", "d_sae"), ("L0", "l0"), ("FVU", "fvu"), ("MSE", "mse"), ("dead %", "dead_fraction"),
            ("dense %", "dense_fraction"), ("eval", "evaluated_on")]
    cols = [(name, key) for name, key in cols if key not in same]
    fmt = {"l0": "{:.1f}", "fvu": "{:.3f}", "mse": "{:.3g}"}
    for name, key in cols:
        table.add_column(name, justify="left" if key in ("tokens", "site", "architecture", "evaluated_on") else "right")
    for r in rows.to_dict("records"):
        cells = []
        for _, key in cols:
            v = r[key]
            if key in ("dead_fraction", "dense_fraction"):
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(fmt.get(key, "{}").format(v))
        table.add_row(*plain(*cells))
    out_console.print(table)
    say(f"table -> {result.csv_path}" + (f", plot -> {result.plot_path}" if result.plot_path else ""))
