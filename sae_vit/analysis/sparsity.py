"""The paper's sparsity analysis: L0, FVU, MSE, dead and dense fractions per layer and token type.

Checkpoints are evaluated on the held-out images of a cache when one matches them (same model and hook);
otherwise the held-out metrics stored in the checkpoint at training time are reported, and the table says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sae_vit.core.defaults import default_cache_dir, workdir
from sae_vit.core.errors import SaeVitError

COLUMNS = ["layer", "tokens", "site", "architecture", "d_sae", "k", "l0", "fvu", "mse", "dead_fraction",
           "dense_fraction", "n_eval_tokens", "evaluated_on", "path"]


@dataclass
class SparsityResult:
    """What :func:`run` returns."""

    rows: pd.DataFrame
    """One row per SAE, sorted by layer and token type (columns: ``COLUMNS``)."""
    csv_path: Path
    plot_path: Path | None
    """The PNG of L0 by layer per token type, or None when matplotlib is not installed or plotting is off."""


def evaluate_checkpoint(path: Path, reader=None, max_tokens: int = 100_000) -> dict:
    """One table row for the SAE at ``path``: evaluated on ``reader``'s held-out split when it matches."""
    from sae_vit.core.metrics import evaluate
    from sae_vit.core.sae import SAE

    sae = SAE.load(path)
    c = sae.cfg
    row = {"layer": c.layer, "tokens": c.tokens, "site": c.site, "architecture": c.architecture, "d_sae": c.d_sae,
           "k": c.k, "path": str(path)}
    keys = ("l0", "fvu", "mse", "dead_fraction", "dense_fraction")
    if reader is not None and _matches(sae, reader):
        acts = reader.load(c.layer, c.tokens, "eval", max_tokens=max_tokens)
        metrics = evaluate(sae, acts)
        return {**row, **{k: metrics[k] for k in keys}, "n_eval_tokens": len(acts), "evaluated_on": "cache"}
    return {**row, **{k: c.training.get(k, float("nan")) for k in keys},
            "n_eval_tokens": c.training.get("eval_tokens", 0), "evaluated_on": "checkpoint"}


def _matches(sae, reader) -> bool:
    m = reader.manifest
    return (sae.cfg.model == m["model"] and sae.cfg.site == m["site"] and sae.cfg.layer in m["layers"]
            and (m["tokens"] == "all" or m["tokens"] == sae.cfg.tokens) and sae.cfg.d_in == m["d_model"])


def check_out(out: str | os.PathLike | None, overwrite: bool) -> Path:
    """The table's path (default ``<workdir>/sparsity.csv``). The table and its plot are derived outputs, so an
    existing one is regenerated (``overwrite`` is accepted for compatibility); only a folder in its place is
    refused."""
    out = Path(out) if out is not None else workdir() / "sparsity.csv"
    if out.is_dir():
        raise SaeVitError(f"--out {out} is a folder; give the CSV file to write.")
    return out


def run(saes: list[str | os.PathLike] | None = None, cache: str | os.PathLike | None = None,
        out: str | os.PathLike | None = None, plot: bool = True, overwrite: bool = False) -> SparsityResult:
    """Build the sparsity table of ``saes`` (default: every SAE in the working folder), evaluated on the held-out
    split of ``cache`` (default: the working folder's, when present) where it matches; write the CSV and plot."""
    from sae_vit.core.atomic import write_csv
    from sae_vit.core.backbone import TOKENS
    from sae_vit.io.cache import CacheReader
    from sae_vit.io.resolve import find_saes

    cache_dir = Path(cache) if cache is not None else default_cache_dir()
    reader = CacheReader(cache_dir) if (cache is not None or (cache_dir / "manifest.json").exists()) else None
    paths = find_saes(saes)
    out = check_out(out, overwrite)
    rows = [evaluate_checkpoint(p, reader) for p in paths]
    order = {t: i for i, t in enumerate(TOKENS)}
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values(["site", "layer", "tokens"], key=lambda s: s.map(order) if s.name == "tokens" else s,
                        ignore_index=True)
    write_csv(out, df)
    plot_path = plot_l0(df, out.with_suffix(".png")) if plot else None
    return SparsityResult(df, out, plot_path)


def plot_l0(df: pd.DataFrame, path: Path) -> Path | None:
    """Three panels against layer: FVU, L0 and dead %, one line per token type (and site); None when matplotlib
    is not installed. (The name is kept from when only L0 was plotted.)"""
    from sae_vit.analysis.common import plot

    panels = [("fvu", "FVU (fraction of variance unexplained)", 1.0), ("l0", "L0 (active latents per token)", 1.0),
              ("dead_fraction", "dead latents (%)", 100.0)]
    styles = {"cls": ("tab:blue", "o", "-"), "patches": ("tab:orange", "s", "--"), "all": ("tab:green", "^", ":")}

    def draw(axes):
        for ax, (column, label, scale) in zip(axes, panels, strict=True):
            for (site, tokens), g in df.groupby(["site", "tokens"]):
                g = g.sort_values("layer")
                colour, marker, line = styles.get(tokens, ("tab:grey", "x", "-."))
                ax.plot(g["layer"], scale * g[column], color=colour, marker=marker, linestyle=line,
                        label=f"{tokens} ({site})")
            ax.set(xlabel="layer", ylabel=label, title=label.split(" (")[0])
            ax.ticklabel_format(axis="y", useOffset=False)
            values = scale * df[column].dropna()
            if len(values) and values.max() - values.min() <= 1e-3 * max(1.0, abs(values.max())):
                # constant (L0 of TopK SAEs is k): show the value, not float noise blown up to fill the axis
                mid = float(values.mean())
                ax.set_ylim(mid - max(1.0, abs(mid) * 0.1), mid + max(1.0, abs(mid) * 0.1))
            ax.grid(alpha=0.3)
        axes[-1].legend(title="tokens", loc="upper left", bbox_to_anchor=(1.02, 1))

    return plot(path, draw, ncols=3, figsize=(13, 3.8))
