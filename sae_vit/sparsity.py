"""The paper's sparsity analysis: L0, FVU, MSE, dead and dense fractions per layer and token type.

Checkpoints are evaluated on the held-out images of a cache when one matches them (same model and hook);
otherwise the held-out metrics stored in the checkpoint at training time are reported, and the table says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .defaults import default_cache_dir, default_sae_dir, default_sae_path, workdir
from .errors import SaeVitError

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


def find_checkpoints(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched recursively for ``*.safetensors``."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(p.rglob("*.safetensors")))
        elif p.is_file():
            found.append(p)
        else:
            raise SaeVitError(f"{p} does not exist; pass SAE checkpoint files or folders that hold them.")
    if not found:
        raise SaeVitError(f"No SAE checkpoints found in {', '.join(map(str, paths))}; train some with `saevit train`.")
    return found


def evaluate_checkpoint(path: Path, reader=None, max_tokens: int = 100_000) -> dict:
    """One table row for the SAE at ``path``: evaluated on ``reader``'s held-out split when it matches."""
    from .metrics import evaluate
    from .sae import SAE

    sae = SAE.load(path)
    c = sae.cfg
    row = {"layer": c.layer, "tokens": c.tokens, "site": c.site, "architecture": c.architecture, "d_sae": c.d_sae,
           "k": c.k, "path": str(path)}
    if reader is not None and _matches(sae, reader):
        acts = reader.load(c.layer, c.tokens, "eval", max_tokens=max_tokens)
        metrics = evaluate(sae, acts)
        row.update({**{k: metrics[k] for k in ("l0", "fvu", "mse", "dead_fraction", "dense_fraction")},
                    "n_eval_tokens": len(acts), "evaluated_on": "cache"})
    else:
        t = c.training
        row.update({k: t.get(k, float("nan")) for k in ("l0", "fvu", "mse", "dead_fraction", "dense_fraction")})
        row.update({"n_eval_tokens": t.get("eval_tokens", 0), "evaluated_on": "checkpoint"})
    return row


def _matches(sae, reader) -> bool:
    m = reader.manifest
    return (sae.cfg.model == m["model"] and sae.cfg.site == m["site"] and sae.cfg.layer in m["layers"]
            and (m["tokens"] == "all" or m["tokens"] == sae.cfg.tokens) and sae.cfg.d_in == m["d_model"])


def train_grid(cache_dir: Path, layers: list[int], token_types: list[str], n_tokens: int | None,
               progress: Callable[[str], None] | None = None, config=None, sae_dir: Path | None = None,
               train_progress: Callable | None = None) -> list[Path]:
    """Train the SAEs of a layer x token-type grid that do not exist yet under ``sae_dir`` (default: the
    working folder's ``saes``), with the :class:`~sae_vit.train.TrainConfig` ``config``, all from one pass over
    the cache (:func:`sae_vit.multi.train_many`); return all paths. ``train_progress(index, state)``."""
    from .cache import CacheReader
    from .multi import Job, train_many
    from .train import TrainConfig

    site = CacheReader(cache_dir).manifest["site"]
    paths, jobs = [], []
    for layer in layers:
        for tokens in token_types:
            path = default_sae_path(layer, tokens, site, sae_dir)
            if not path.exists():
                if progress:
                    progress(f"training layer {layer} / {tokens} -> {path}")
                jobs.append(Job(layer, tokens, config or TrainConfig(), path))
            paths.append(path)
    if jobs:
        train_many(cache_dir, jobs, n_tokens=n_tokens, progress=train_progress)
    return paths


def run(
    saes: list[str | os.PathLike] | None = None,
    cache: str | os.PathLike | None = None,
    grid: bool = False,
    layers: str | None = None,
    tokens: str = "cls,patches,all",
    n_tokens: int | None = None,
    out: str | os.PathLike | None = None,
    plot: bool = True,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    config=None,
    sae_dir: str | os.PathLike | None = None,
) -> SparsityResult:
    """Build the sparsity table (training the grid first with ``grid``, with the TrainConfig ``config``,
    into ``sae_dir``), write the CSV and the plot."""
    from .backbone import TOKENS
    from .cache import CacheReader

    out = Path(out) if out is not None else workdir() / "sparsity.csv"
    if out.exists() and not overwrite:
        raise SaeVitError(f"{out} already exists; pass --overwrite to replace it or choose another --out.")
    cache_dir = Path(cache) if cache is not None else default_cache_dir()
    reader = CacheReader(cache_dir) if (cache is not None or (cache_dir / "manifest.json").exists()) else None
    if grid:
        if reader is None:
            raise SaeVitError("--grid needs a cache; run `saevit cache` first or pass --cache DIR.")
        token_types = [t.strip() for t in tokens.split(",") if t.strip()]
        for t in token_types:
            if t not in TOKENS:
                raise SaeVitError(f"Unknown token type {t!r} in --tokens; use cls, patches or all.")
        from .api import parse_layers

        layer_list = parse_layers(layers, 10**6) if layers else reader.layers
        paths = train_grid(cache_dir, layer_list, token_types, n_tokens, progress, config,
                           Path(sae_dir) if sae_dir is not None else None)
        if saes:
            paths += find_checkpoints(saes)
    else:
        paths = find_checkpoints(saes or [default_sae_dir()])
    rows = [evaluate_checkpoint(p, reader) for p in dict.fromkeys(paths)]
    order = {t: i for i, t in enumerate(TOKENS)}
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values(["site", "layer", "tokens"], key=lambda s: s.map(order) if s.name == "tokens" else s)
    df = df.reset_index(drop=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    plot_path = plot_l0(df, out.with_suffix(".png")) if plot else None
    return SparsityResult(df, out, plot_path)


def plot_l0(df: pd.DataFrame, path: Path) -> Path | None:
    """L0 by layer, one line per token type (and site); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for (site, tokens), g in df.groupby(["site", "tokens"]):
        g = g.sort_values("layer")
        ax.plot(g["layer"], g["l0"], marker="o", label=f"{tokens} ({site})")
    ax.set_xlabel("layer")
    ax.set_ylabel("L0 (active latents per token)")
    ax.set_title("SAE sparsity by layer and token type")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
