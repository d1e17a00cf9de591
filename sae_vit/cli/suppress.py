"""``saevit suppress``: remove a spurious attribute by suppressing SAE features.

The work is done by :func:`sae_vit.analysis.suppress.suppress`; nothing heavy is imported until the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sae_vit.cli._options import SAE_HELP, TextEmbeddingsOpt
from sae_vit.cli._ui import LazyProgress, check_inputs, out_console, parse_layers, plain, say
from sae_vit.core.errors import SaeVitError


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise SaeVitError(f"Could not read {what} {text!r}; give comma-separated integers like 1,2,4,8.") from exc
    if not values or min(values) < 1:
        raise SaeVitError(f"{what} must list positive integers, e.g. 1,2,4,8.")
    return values


def _words(text: str | None, sep: str = ",") -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(p.strip() for p in text.split(sep) if p.strip())


def suppress_cmd(
    data: Annotated[Path, typer.Option(
        "--data", help="Dataset folder (Waterbirds: metadata.csv; CelebA: list_attr_celeba.txt ...) or, for "
                       "--task csv, a CSV with path, target, spurious and split columns.")],
    task: Annotated[str, typer.Option("--task", help="waterbirds, celeba or csv.")],
    sae: Annotated[list[str], typer.Option(
        "--sae", help=f"Repeatable, one SAE per layer: {SAE_HELP}, or a folder of checkpoints.")],
    target: Annotated[str | None, typer.Option(
        "--target", help="Target column (Waterbirds: y; CelebA default Blond_Hair; csv default label).")] = None,
    spurious: Annotated[str | None, typer.Option(
        "--spurious", help="Binary spurious column (Waterbirds: place; CelebA default Male; csv: required).")] = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Only these layers' SAEs, e.g. 4,6,8 or all. Default: every --sae.")] = None,
    n_features: Annotated[str, typer.Option(
        "--n-features", help="Numbers of top-ranked features to suppress (chosen on val).")] = "1,2,4,8,16,32,64",
    ranking: Annotated[str, typer.Option(
        "--ranking", help="mean_diff (standardised difference of means), auroc, or text (--text-query).")]
    = "mean_diff",
    within_class: Annotated[bool, typer.Option(
        "--within-class/--pooled", help="Score association within each target class (default) or over all "
                                       "train images.")] = True,
    text_query: Annotated[str | None, typer.Option(
        "--text-query", help="With --ranking text: words for the spurious attribute, e.g. water,land.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Backbone; default: the model the SAEs were trained on.")] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Local weights for --model (for toy: a toy-CLIP file or an image-tower state dict).")]
    = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Zero-shot prompt per class in label order, comma-separated; 'a|b' averages names "
                          "(used in the template 'a photo of a {}.').")] = None,
    text_embeddings: TextEmbeddingsOpt = None,
    vocab: Annotated[Path | None, typer.Option(
        "--vocab", help="Concept words (one per line) to describe the chosen features; toy: the world's words.")]
    = None,
    probe: Annotated[bool, typer.Option(
        "--probe/--no-probe", help="Also evaluate with a linear probe on the image embedding (train split).")]
    = True,
    n_random: Annotated[int, typer.Option("--n-random", min=0, help="Random-feature draws (baseline).")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the random-feature baseline.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/suppress.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace earlier results in --out.")] = False,
) -> None:
    """Suppress the SAE features most associated with a spurious attribute; report group accuracies.

    Features are ranked on train, layer and N chosen on val (worst-group accuracy), results on test, with
    no intervention, N random features and a probe-direction projection as baselines.
    """
    from sae_vit.analysis.suppress import SuppressConfig, suppress
    from sae_vit.analysis.suppress.data import TASKS
    from sae_vit.io.resolve import find_saes

    if task not in TASKS:
        raise SaeVitError(f"Unknown --task {task!r}; use one of: {', '.join(TASKS)}.")
    check_inputs(data=data, weights=weights, text_embeddings=text_embeddings, vocab=vocab)
    paths = find_saes(sae)  # resolved (hf://, SAELens, sparsify) before the library checks --out
    cfg = SuppressConfig(n_features=_ints(n_features, "--n-features"), ranking=ranking,
                         within_class=within_class, text_query=_words(text_query) or (), n_random=n_random,
                         probe=probe, batch_size=batch_size, seed=seed)
    with LazyProgress("suppress", "what") as bar:
        result, written = suppress(
            data, task, paths, target, spurious, parse_layers(layers), model, weights, _words(classes), text_embeddings,
            vocab, cfg, out, overwrite,
            progress=lambda what, done, total: bar.update(completed=done, total=total, what=what),
        )
    _print(result, written)


def _pct(x) -> str:
    return "" if x != x else f"{100 * x:.1f}"  # NaN -> blank


def _print(result, written) -> None:
    from rich.table import Table

    s = result.summary
    t = result.table
    group_cols = [c for c in t.columns if c.startswith("test_acc_g")]
    for how in dict.fromkeys(t["eval"]):
        ch = s["chosen"][how]
        table = Table(title=plain(f"{how.replace('_', '-')}: predicting {s['target']} with {s['spurious']} "
                                  "suppressed (test %; layer and N chosen on val)")[0])
        for col in ("method", "layer", "N", "val worst", "avg", "avg (w)", "worst",
                    *[f"g{c.removeprefix('test_acc_g')}" for c in group_cols]):
            table.add_column(col, justify="left" if col == "method" else "right")
        for r in t[t["eval"] == how].to_dict("records"):
            worst = _pct(r["test_worst"]) + (f" ± {100 * r['test_worst_std']:.1f}" if r["draws"] > 1 else "")
            table.add_row(*plain(_METHOD_NAMES[r["method"]], _int(r["layer"]), _int(r["n"]), _pct(r["val_worst"]),
                                 _pct(r["test_avg"]), _pct(r["test_avg_weighted"]), worst,
                                 *[_pct(r[c]) for c in group_cols]))
        out_console.print(table)
        part = result.features[result.features["eval"] == how].head(8)
        desc = "; ".join(f"{int(f)} ({sc:.2f}{': ' + c if isinstance(c, str) and c else ''})" for f, sc, c in
                         zip(part["feature"], part["score"], part["concepts"], strict=True))
        say(f"chosen layer {ch['layer']}, N={ch['n']}; top features (score: concepts): {desc}")
    groups = "; ".join(f"g{k} = {v}" for k, v in s["groups"].items())
    say(f"groups: {groups}. avg: mean over test images; avg (w): group accuracies weighted by the train group "
        "shares (group_DRO); methods: none, SAE (top-N features zeroed), random (N random live features, mean ± sd "
        "of worst), projection (spurious probe direction removed).")
    files = ", ".join(str(p) for p in written.values() if p is not None)
    say(f"results -> {files}")


_METHOD_NAMES = {"none": "none", "sae": "SAE", "random": "random", "projection": "projection"}


def _int(x) -> str:
    return "" if x is None or x != x else str(int(x))
