"""``saevit sparsity``: the paper's table of L0, FVU, MSE, dead and dense fractions per layer and token selection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import check_number, note, parse_layers, parse_names, print_table, result, say


def sparsity_cmd(
    saes: Annotated[list[str] | None, typer.Argument(
        help=f"SAEs: each {opt.SAE_HELP}; a folder of several is searched for *.safetensors. "
             "Default: <workdir>/saes.")] = None,
    cache: Annotated[list[Path] | None, typer.Option(
        "--cache", help="Evaluate on this cache's held-out images (default: <workdir>/cache when present). "
                        "Repeatable: each SAE on the cache it was trained on, else the first that matches (e.g. "
                        "a demo's cache and cache_cls).")] = None,
    grid: Annotated[bool, typer.Option(
        "--grid", help="Train one SAE per layer x token selection of the cache first (missing ones only).")] = False,
    layers: Annotated[str | None, typer.Option("--layers", help="With --grid: layers (default: all cached).")] = None,
    tokens: Annotated[str, typer.Option("--tokens", help="With --grid: token selections.")] = "cls,patches,all",
    n_tokens: Annotated[int | None, typer.Option(
        "--n-tokens", min=1, help="With --grid: training tokens per SAE.")] = None,
    architecture: opt.Architecture = opt.Arch.topk,
    k: opt.K = 32,
    l1_coefficient: opt.L1 = 8e-5,
    expansion: opt.Expansion = 16,
    lr: Annotated[str, typer.Option(
        "--lr", help="With --grid: peak learning rate, or 'auto' (as `saevit train`).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="With --grid: tokens per step.")] = 4096,
    seed: opt.Seed = 0,
    sae_dir: Annotated[Path | None, typer.Option(
        "--sae-dir", help="With --grid: where the SAEs go (layer_{L}/{tokens}/sae.safetensors). "
                          "Default: <workdir>/saes.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="CSV path. Default: <workdir>/sparsity.csv.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Also write a PNG of L0 by layer.")] = True,
    allow_incomplete: Annotated[bool, typer.Option(
        "--allow-incomplete", help="With --grid: train on an unfinished cache.")] = False,
    overwrite: opt.Regenerated = False,
    as_json: opt.Json = False,
) -> None:
    """Table of L0, FVU, MSE, dead % and dense % per layer and token selection (the paper's sparsity
    analysis).

    --architecture, --k, --l1-coefficient, --expansion, --lr, --batch-size and --seed are the recipe of the SAEs
    --grid trains.
    """
    import sae_vit.pipeline as api
    from sae_vit.cli.cache import parse_lr
    from sae_vit.core.errors import SaeVitError
    from sae_vit.core.train import TrainConfig

    check_number(l1_coefficient, "--l1-coefficient")
    config = TrainConfig(architecture=architecture, k=k, l1_coefficient=l1_coefficient, expansion=expansion,
                         lr=parse_lr(lr), batch_size=batch_size, seed=seed)
    config.validate()
    if grid and cache and len(cache) > 1:
        raise SaeVitError("--grid trains from one cache; pass --cache once (several are for evaluating SAEs).")
    caches = None if not cache else cache[0] if len(cache) == 1 else list(cache)
    layer_list = parse_layers(layers)
    table = api.sparsity(saes, caches, grid, None if layer_list == "all" else layer_list, parse_names(tokens),
                          n_tokens, out, plot, overwrite, progress=note, config=config, sae_dir=sae_dir,
                          allow_incomplete=allow_incomplete)
    print_sparsity(table)


def print_sparsity(sparsity) -> None:
    """The table of a :class:`~sae_vit.analysis.sparsity.SparsityResult`; columns equal for every SAE go into the
    title, so the table fits a terminal."""
    rows = sparsity.rows
    from sae_vit.analysis.sparsity import MIN_EVAL_TOKENS

    rows = rows.assign(recipe=[f"k {r['k']:.0f}" if r["architecture"] == "topk" else f"L1 {r['l1_coefficient']:g}"
                               for r in rows.to_dict("records")])
    same = {c: rows[c].iloc[0] for c in ("site", "architecture", "d_sae", "recipe", "evaluated_on")
            if rows[c].nunique() == 1}
    title = "SAE sparsity (held-out tokens" + "".join(f"; {k} {v}" for k, v in same.items()) + ")"
    cols = [("layer", "layer"), ("tokens", "tokens"), ("site", "site"), ("arch", "architecture"),
            ("d_sae", "d_sae"), ("recipe", "recipe"), ("L0", "l0"), ("FVU", "fvu"), ("MSE", "mse"),
            ("dead %", "dead_fraction"), ("dense %", "dense_fraction"), ("held-out", "n_eval_tokens"),
            ("eval", "evaluated_on")]
    cols = [(name, key) for name, key in cols if key not in same]
    fmt = {"l0": "{:.1f}", "fvu": "{:.3f}", "mse": "{:.3g}"}

    def cell(key, v) -> str:
        return f"{100 * v:.1f}" if key.endswith("_fraction") else fmt.get(key, "{}").format(v)

    def held_out(r) -> str:
        return f"{r['n_eval_tokens']}" + ("" if r["reliable"] else " (few)")

    records = sparsity.rows.to_dict("records")
    result(rows=records, csv=str(sparsity.csv_path), plot=str(sparsity.plot_path) if sparsity.plot_path else None)
    shown = rows.to_dict("records")
    print_table(title, [name for name, _ in cols],
                [[held_out(r) if key == "n_eval_tokens" else cell(key, r[key]) for _, key in cols] for r in shown],
                left=("tokens", "site", "arch", "recipe", "held-out", "eval"))
    if not rows["reliable"].all():
        say(f"(few): fewer than {MIN_EVAL_TOKENS} held-out tokens, so dead % and L0 are unreliable; cache more "
            "images (one CLS token each).")
    say(f"table -> {sparsity.csv_path}" + (f", plot -> {sparsity.plot_path}" if sparsity.plot_path else ""))
