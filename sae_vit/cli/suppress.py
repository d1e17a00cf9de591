"""``saevit suppress``: remove a spurious attribute by suppressing SAE features (library:
:func:`sae_vit.analysis.suppress.suppress`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import (
    LazyProgress,
    check_inputs,
    parse_layers,
    parse_names,
    parse_numbers,
    print_table,
    result,
    say,
)
from sae_vit.core.errors import SaeVitError


def suppress_cmd(
    data: Annotated[Path, typer.Option(
        "--data", help="Dataset folder (Waterbirds: metadata.csv; CelebA: list_attr_celeba.txt ...) or, for "
                       "--task csv, a CSV with path, target, spurious and split columns.")],
    task: Annotated[opt.SuppressTask, typer.Option("--task", help="The benchmark, or csv for your own.")],
    sae: Annotated[list[str], typer.Option(
        "--sae", help=f"Repeatable, one SAE per layer: {opt.SAE_HELP}, or a folder of checkpoints.")],
    target: Annotated[str | None, typer.Option(
        "--target", help="Target column (Waterbirds: y; CelebA default Blond_Hair; csv default label).")] = None,
    spurious: Annotated[str | None, typer.Option(
        "--spurious", help="Binary spurious column (Waterbirds: place; CelebA default Male; csv: required).")] = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Only these layers' SAEs, e.g. 4,6,8 or all. Default: every --sae.")] = None,
    n_features: Annotated[str, typer.Option(
        "--n-features", help="Numbers of top-ranked features to suppress (chosen on val).")] = "1,2,4,8,16,32,64",
    extend_n: Annotated[bool, typer.Option(
        "--extend-n/--no-extend-n", help="Keep doubling N past the largest --n-features value while it is the "
                                         "validation best (up to every live feature).")] = True,
    ranking: Annotated[opt.Ranking, typer.Option(
        "--ranking", help="mean_diff: standardised difference of means; text: by --text-query.")]
    = opt.Ranking.mean_diff,
    within_class: Annotated[bool, typer.Option(
        "--within-class/--pooled", help="Score association within each target class (default) or over all "
                                       "train images.")] = True,
    text_query: Annotated[str | None, typer.Option(
        "--text-query", help="With --ranking text: words for the spurious attribute, e.g. water,land.")] = None,
    model: opt.SaeModel = None,
    weights: opt.Weights = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Zero-shot prompt per class in label order, comma-separated; 'a|b' averages names "
                          "(used in the template 'a photo of a {}.').")] = None,
    text_embeddings: opt.TextEmbeddings = None,
    vocab: opt.Vocab = None,
    probe: Annotated[bool, typer.Option(
        "--probe/--no-probe", help="Also evaluate with a linear probe on the image embedding (train split).")]
    = True,
    n_random: Annotated[int, typer.Option("--n-random", min=0, help="Random-feature draws (baseline).")] = 3,
    batch_size: opt.BatchSize = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the random-feature baseline.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/suppress.")] = None,
    overwrite: opt.Regenerated = False,
    as_json: opt.Json = False,
) -> None:
    """Suppress the SAE features most associated with a spurious attribute; report group accuracies.

    Features are ranked on train, layer and N chosen on val (worst-group accuracy), results on test, with
    no intervention, N random features and a probe-direction projection as baselines.
    """
    from sae_vit.analysis.suppress import SuppressConfig, suppress
    from sae_vit.analysis.suppress.data import TASKS
    from sae_vit.core.backbone import check_choice
    from sae_vit.io.resolve import find_saes

    check_choice(task, TASKS, "--task")
    check_inputs(data=data, weights=weights, text_embeddings=text_embeddings, vocab=vocab)
    paths = find_saes(sae)  # resolved (hf://, SAELens, sparsify) before the library checks --out
    n_list = parse_numbers(n_features, "--n-features")
    if not n_list or min(n_list) < 1:
        raise SaeVitError("--n-features must list positive integers, e.g. 1,2,4,8.")
    cfg = SuppressConfig(n_features=tuple(n_list), extend_n=extend_n, ranking=ranking, within_class=within_class,
                         text_query=tuple(parse_names(text_query) or ()), n_random=n_random, probe=probe,
                         batch_size=batch_size, seed=seed)
    with LazyProgress("suppress", "what") as bar:
        res, written = suppress(
            data, task, paths, target, spurious, parse_layers(layers), model, weights, parse_names(classes),
            text_embeddings, vocab, cfg, out, overwrite,
            progress=lambda what, done, total: bar.update(completed=done, total=total, what=what),
        )
    _print(res, written)


def _pct(x) -> str:
    return "" if x != x else f"{100 * x:.1f}"  # NaN -> blank


def _int(x) -> str:
    return "" if x is None or x != x else str(int(x))


def _print(res, written) -> None:
    s = res.summary
    t = res.table
    result(rows=t.to_dict("records"), summary=s, files={k: v for k, v in written.items() if v is not None})
    group_cols = [c for c in t.columns if c.startswith("test_acc_g")]
    cols = ("method", "layer", "N", "val worst", "avg", "avg (w)", "worst",
            *[f"g{c.removeprefix('test_acc_g')}" for c in group_cols])
    for how in dict.fromkeys(t["eval"]):
        rows = []
        for r in t[t["eval"] == how].to_dict("records"):
            worst = _pct(r["test_worst"]) + (f" ± {100 * r['test_worst_std']:.1f}" if r["draws"] > 1 else "")
            rows.append(("SAE" if r["method"] == "sae" else r["method"], _int(r["layer"]), _int(r["n"]),
                         _pct(r["val_worst"]), _pct(r["test_avg"]), _pct(r["test_avg_weighted"]), worst,
                         *[_pct(r[c]) for c in group_cols]))
        title = f"{how.replace('_', '-')}: predicting {s['target']} with {s['spurious']} suppressed"
        print_table(title + " (test %; layer and N chosen on val)", cols, rows, left=("method",))
        part = res.features[res.features["eval"] == how].head(8)
        desc = "; ".join(f"{int(f)} ({sc:.2f}{': ' + c if isinstance(c, str) and c else ''})" for f, sc, c in
                         zip(part["feature"], part["score"], part["concepts"], strict=True))
        ch = s["chosen"][how]
        say(f"chosen layer {ch['layer']}, N={ch['n']}; top features (score: concepts): {desc}")
    groups = "; ".join(f"g{k} = {v}" for k, v in s["groups"].items())
    say(f"groups: {groups}. avg: mean over test images; avg (w): group accuracies weighted by the train group "
        "shares (group_DRO); methods: none, SAE (top-N features zeroed), random (N random live features, mean ± sd "
        "of worst; random_rate / random_act: each matched to one of the top-N on firing rate / mean activation), "
        "projection (spurious probe direction removed).")
    files = ", ".join(str(p) for p in written.values() if p is not None)
    say(f"results -> {files}")
