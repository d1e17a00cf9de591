"""The paper's sparsity analysis: L0, FVU, MSE, dead and dense fractions per layer and token type.

Checkpoints are evaluated on the held-out images of a cache when one matches them (same model and hook; of
several caches, the one the SAE was trained on); otherwise the held-out metrics stored in the checkpoint at
training time are reported, and the table says so. A row measured on fewer than :data:`MIN_EVAL_TOKENS` held-out
tokens is flagged ``reliable = False``.

:func:`density_contrast` compares mean L0 between two sets of held-out tokens (patches against CLS, a deep
layer's CLS against a shallow one's) with a bootstrap interval, so that a verdict on the paper's density
pattern needs more than run-to-run noise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sae_vit.core.defaults import default_cache_dir, workdir
from sae_vit.core.errors import SaeVitError

COLUMNS = ["layer", "tokens", "site", "architecture", "d_sae", "k", "l1_coefficient", "l0", "fvu", "mse",
           "dead_fraction", "dense_fraction", "n_eval_tokens", "reliable", "evaluated_on", "path"]

#: A latent that fires on this fraction of tokens ...
RARE_RATE = 0.01
#: ... should be missed (counted dead) by the held-out set with at most this probability.
MISS_PROBABILITY = 0.02


def min_eval_tokens(rate: float = RARE_RATE, miss: float = MISS_PROBABILITY) -> int:
    """Held-out tokens below which a row's metrics are flagged unreliable: the smallest n for which a latent
    firing on ``rate`` of tokens fires at least once with probability 1 - ``miss`` ((1 - rate)^n <= miss). With
    fewer, dead % counts live latents as dead and L0 / FVU rest on a handful of images."""
    return math.ceil(math.log(miss) / math.log(1 - rate))


#: Held-out tokens a row needs to be marked reliable (390 with the defaults).
MIN_EVAL_TOKENS = min_eval_tokens()


def reliable(n_eval_tokens: int) -> bool:
    """Whether metrics on ``n_eval_tokens`` held-out tokens can be trusted (at least :data:`MIN_EVAL_TOKENS`)."""
    return n_eval_tokens >= MIN_EVAL_TOKENS

#: The density verdict's margin: a ratio of mean L0 counts only when its whole bootstrap interval exceeds this.
DENSITY_MARGIN = 1.05


@dataclass
class SparsityResult:
    """What :func:`run` returns."""

    rows: pd.DataFrame
    """One row per SAE, sorted by layer and token type (columns: ``COLUMNS``)."""
    csv_path: Path
    plot_path: Path | None
    """The PNG of L0 by layer per token type, or None when matplotlib is not installed or plotting is off."""
    token_l0: dict[str, np.ndarray] | None = None
    """Per SAE path evaluated on a cache: the active-latent count of each held-out token (for
    :func:`density_contrast`)."""


def evaluate_checkpoint(path: Path, reader=None, max_tokens: int = 100_000, token_l0: dict | None = None) -> dict:
    """One table row for the SAE at ``path``: evaluated on the held-out split of ``reader`` (a CacheReader, or a
    list of them: the one the SAE was trained on, else the first that matches) when one matches. With
    ``token_l0`` (a dict), the per-token active counts of a cache evaluation are stored in it under the path."""
    from sae_vit.core.metrics import evaluate
    from sae_vit.core.sae import SAE

    sae = SAE.load(path)
    c = sae.cfg
    row = {"layer": c.layer, "tokens": c.tokens, "site": c.site, "architecture": c.architecture, "d_sae": c.d_sae,
           "k": c.k, "l1_coefficient": c.l1_coefficient, "path": str(path)}
    keys = ("l0", "fvu", "mse", "dead_fraction", "dense_fraction")
    reader = _pick_reader(sae, reader)
    if reader is not None:
        acts = reader.load(c.layer, c.tokens, "eval", max_tokens=max_tokens)
        metrics = evaluate(sae, acts, per_token=token_l0 is not None)
        if token_l0 is not None:
            token_l0[str(path)] = metrics["token_l0"].numpy()
        return {**row, **{k: metrics[k] for k in keys}, "n_eval_tokens": len(acts),
                "reliable": reliable(len(acts)), "evaluated_on": "cache"}
    n_eval = c.training.get("eval_tokens", 0)
    return {**row, **{k: c.training.get(k, float("nan")) for k in keys}, "n_eval_tokens": n_eval,
            "reliable": reliable(n_eval), "evaluated_on": "checkpoint"}


def _pick_reader(sae, readers):
    """Of ``readers`` (one, a list, or None), the one ``sae`` was trained on if it matches, else the first match."""
    readers = [r for r in ([] if readers is None else readers if isinstance(readers, list) else [readers])
               if _matches(sae, r)]
    trained_on = sae.cfg.training.get("cache")
    same = [r for r in readers if trained_on is not None and Path(r.root).resolve() == Path(trained_on).resolve()]
    return (same or readers or [None])[0]


def density_contrast(dense: np.ndarray, sparse: np.ndarray, n_boot: int = 1000, seed: int = 0,
                     margin: float = DENSITY_MARGIN, level: float = 0.95) -> dict:
    """Is ``dense`` (per-token L0 of one set of held-out tokens) denser than ``sparse`` (another)?

    Returns the ratio of mean L0, its ``level`` bootstrap interval (each set resampled with replacement,
    ``n_boot`` times) and ``holds``: the whole interval lies above ``margin``. The margin absorbs what the
    bootstrap cannot see: two trainings of the same recipe differ by a few per cent."""
    dense, sparse = np.asarray(dense, dtype=np.float64), np.asarray(sparse, dtype=np.float64)
    ratio = float(dense.mean() / max(sparse.mean(), 1e-12))
    rng = np.random.default_rng(seed)
    a = dense[rng.integers(0, len(dense), (n_boot, len(dense)))].mean(1)
    b = sparse[rng.integers(0, len(sparse), (n_boot, len(sparse)))].mean(1)
    boot = a / np.maximum(b, 1e-12)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"ratio": ratio, "lo": float(lo), "hi": float(hi), "holds": bool(lo > margin), "margin": margin,
            "n_dense": len(dense), "n_sparse": len(sparse), "n_boot": n_boot}


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


def run(saes: list[str | os.PathLike] | None = None, cache: str | os.PathLike | list | None = None,
        out: str | os.PathLike | None = None, plot: bool = True, overwrite: bool = False) -> SparsityResult:
    """Build the sparsity table of ``saes`` (default: every SAE in the working folder), evaluated on the held-out
    split of ``cache`` (default: the working folder's, when present; a list: each SAE on the one it was trained
    on, else the first that matches) where it matches; write the CSV and plot."""
    from sae_vit.core.atomic import write_csv
    from sae_vit.core.backbone import TOKENS
    from sae_vit.io.cache import CacheReader
    from sae_vit.io.resolve import find_saes

    if isinstance(cache, list | tuple):
        reader = [CacheReader(c) for c in cache]
    else:
        cache_dir = Path(cache) if cache is not None else default_cache_dir()
        reader = CacheReader(cache_dir) if (cache is not None or (cache_dir / "manifest.json").exists()) else None
    paths = find_saes(saes)
    out = check_out(out, overwrite)
    token_l0: dict[str, np.ndarray] = {}
    rows = [evaluate_checkpoint(p, reader, token_l0=token_l0) for p in paths]
    order = {t: i for i, t in enumerate(TOKENS)}
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values(["site", "architecture", "layer", "tokens"],
                        key=lambda s: s.map(order) if s.name == "tokens" else s, ignore_index=True)
    write_csv(out, df)
    plot_path = plot_l0(df, out.with_suffix(".png")) if plot else None
    return SparsityResult(df, out, plot_path, token_l0)


def plot_l0(df: pd.DataFrame, path: Path) -> Path | None:
    """Three panels against layer: FVU, L0 and dead %, one line per token type (and site); None when matplotlib
    is not installed. (The name is kept from when only L0 was plotted.)"""
    from sae_vit.analysis.common import plot

    panels = [("fvu", "FVU (fraction of variance unexplained)", 1.0), ("l0", "L0 (active latents per token)", 1.0),
              ("dead_fraction", "dead latents (%)", 100.0)]
    styles = {"cls": ("tab:blue", "o"), "patches": ("tab:orange", "s"), "all": ("tab:green", "^")}
    lines = {"relu": "-", "topk": ":"}
    several = df["site"].nunique() > 1

    def draw(axes):
        for ax, (column, label, scale) in zip(axes, panels, strict=True):
            for (site, arch, tokens), g in df.groupby(["site", "architecture", "tokens"]):
                g = g.sort_values("layer")
                colour, marker = styles.get(tokens, ("tab:grey", "x"))
                ax.plot(g["layer"], scale * g[column], color=colour, marker=marker, linestyle=lines.get(arch, "-."),
                        label=f"{tokens} ({arch}" + (f", {site})" if several else ")"))
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
