"""What a suppression experiment returns and writes: the results table, the sweep, the suppressed features, the
summary and a plot of worst-group accuracy by layer."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from sae_vit.core.errors import SaeVitError

OUTPUT_FILES = ("suppress_table.csv", "suppress_sweep.csv", "suppress_features.csv", "suppress_summary.json",
                "suppress_worst_by_layer.png")


class SuppressResult(NamedTuple):
    """What :func:`run_suppress` returns."""

    table: object
    """DataFrame, one row per (eval, method): the chosen layer and N, validation worst group, and test avg,
    avg_weighted, worst and per-group accuracies (random: mean over draws, with ``worst_std``)."""
    sweep: object
    """DataFrame of every evaluated (eval, method, layer, n, draw, split): val for the full layer × N sweep and
    each layer's projection; test for each layer at its validation-best N, each layer's projection, the
    baseline and the random draws."""
    features: object
    """DataFrame of the suppressed features at each eval's chosen layer: rank, feature, score, density, max
    activation, and top concepts through the text head."""
    summary: dict
    """Chosen layer and N per eval, options, dataset sizes, group names, SAE paths."""


def results_table(sweep, evals: list[str], chosen: dict, chosen_proj: dict):
    """One row per (eval, method) from the ``sweep``: each method at the layer and N chosen on validation."""
    import pandas as pd

    rows = []
    group_cols = sorted(c for c in sweep.columns if c.startswith("acc_g"))
    for how in evals:
        layer, n = chosen[how]
        player = chosen_proj[how][0]
        picks = [("none", -1, 0), ("sae", layer, n), ("random", layer, n), ("projection", player, 0)]
        for method, lay, nn in picks:
            sel = sweep[(sweep["eval"] == how) & (sweep["method"] == method) & (sweep["layer"] == lay)
                        & (sweep["n"] == nn)]
            val, test = sel[sel["split"] == "val"], sel[sel["split"] == "test"]
            row = {"eval": how, "method": method, "layer": None if lay < 0 else lay, "n": nn or None,
                   "val_worst": float(val["worst"].mean()) if len(val) else float("nan")}
            for col in ("avg", "avg_weighted", "worst", *group_cols):
                row[f"test_{col}"] = float(test[col].mean())
            row["test_worst_std"] = float(test["worst"].std()) if len(test) > 1 else 0.0
            row["draws"] = len(test)
            rows.append(row)
    return pd.DataFrame(rows)


def plot_worst_by_layer(sweep, path) -> Path | None:
    """PNG of worst-group accuracy by layer (SAE suppression at each layer's validation-best N, and the
    projection baseline; no intervention as a line), validation and test, one panel per evaluation."""
    from sae_vit.analysis.common import pyplot
    from sae_vit.core.atomic import save_figure

    plt = pyplot()
    if plt is None:
        return None
    evals = list(dict.fromkeys(sweep["eval"]))
    fig, axes = plt.subplots(1, len(evals), figsize=(5.5 * len(evals), 4), squeeze=False)
    for ax, how in zip(axes[0], evals, strict=True):
        s = sweep[sweep["eval"] == how]
        for split, style in (("val", "--"), ("test", "-")):
            part = s[s["split"] == split]
            sae = part[part["method"] == "sae"].groupby("layer")["worst"].max()
            proj = part[part["method"] == "projection"].set_index("layer")["worst"]
            ax.plot(sae.index, 100 * sae.values, style, marker="o", color="C0", label=f"SAE suppression ({split})")
            ax.plot(proj.index, 100 * proj.values, style, marker="s", color="C2", label=f"probe projection ({split})")
            base = part[part["method"] == "none"]["worst"]
            if len(base):
                ax.axhline(100 * float(base.iloc[0]), linestyle=style, color="grey", linewidth=0.8,
                           label=f"no intervention ({split})")
        ax.set_xlabel("layer")
        ax.set_ylabel("worst-group accuracy (%)")
        ax.set_title(how.replace("_", "-"))
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace earlier results unless ``overwrite``."""
    existing = [f for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise SaeVitError(f"{out} already holds suppress results ({existing[0]}); pass --overwrite or choose "
                          "another --out.")


def write_outputs(result: SuppressResult, out: Path, overwrite: bool = False) -> dict[str, Path | None]:
    """Write the table, sweep and features CSVs, the summary JSON and the PNG atomically under ``out``."""
    from sae_vit.core.atomic import write_csv, write_json

    out = Path(out)
    check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {}
    for name, frame in (("table", result.table), ("sweep", result.sweep), ("features", result.features)):
        written[name] = write_csv(out / f"suppress_{name}.csv", frame)
    written["summary"] = write_json(out / "suppress_summary.json", result.summary)
    written["plot"] = plot_worst_by_layer(result.sweep, out / "suppress_worst_by_layer.png")
    return written
