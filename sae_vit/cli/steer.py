"""``saevit steer-score``: how precisely each SAE feature (and each neuron, each random direction) steers CLIP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import (
    LazyProgress,
    check_images,
    check_inputs,
    check_number,
    note_default,
    parse_numbers,
    print_table,
    result,
    say,
)


def steer_score_cmd(
    sae: Annotated[list[str] | None, typer.Option(
        "--sae", help=f"Repeatable: {opt.SAE_HELP}, or a folder of checkpoints. Default: every SAE in "
                      "<workdir>/saes.")] = None,
    model: opt.SaeModel = None,
    weights: opt.Weights = None,
    vocab: opt.Vocab = None,
    text_embeddings: opt.TextEmbeddings = None,
    images: opt.Images = None,
    world: opt.World = None,
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Probe images (paper: 192).")] = 64,
    alphas: Annotated[str, typer.Option("--alphas", help="Strengths (paper's sweep).")] = "-20,-5,0,5,10,20,50,150",
    strength_unit: Annotated[opt.StrengthUnit, typer.Option(
        "--strength-unit", help="auto: absolute for CLIP ViT-B/32, relative to the activation norm otherwise.")
    ] = opt.StrengthUnit.auto,
    threshold: Annotated[float, typer.Option("--threshold", help="Steerable if S exceeds it (and the nulls).")] = 0.10,
    decide_at: Annotated[str, typer.Option(
        "--decide-at", help="Decision strength in mean hooked-token norms, or 'paper' (the largest alpha, the "
                            "paper's s = 150).")] = "default",
    null_seeds: Annotated[int, typer.Option("--null-seeds", help="Draws of the noise null (its bar: the largest S).")
                          ] = 8,
    temperature: Annotated[float, typer.Option("--temperature")] = 100.0,
    tokens: Annotated[opt.SteerTokens, typer.Option(
        "--tokens", help="Token selection to clamp: sae is the SAE's own.")] = opt.SteerTokens.sae,
    features: opt.FeatureIds = None,
    max_features: Annotated[int, typer.Option("--max-features", help="Sample this many features (quick estimate).")] = 256,
    full: Annotated[bool, typer.Option("--full", help="Score every feature (ignores --max-features).")] = False,
    neurons: Annotated[bool, typer.Option("--neurons/--no-neurons", help="Residual-basis neuron baseline.")] = True,
    mlp_neurons: Annotated[bool, typer.Option("--mlp-neurons", help="Also the MLP hidden units.")] = False,
    random_control: Annotated[int, typer.Option("--random-control", help="Random unit directions as a control.")] = 256,
    precision: Annotated[opt.Precision, typer.Option(
        "--precision", help="For the steered passes.")] = opt.Precision.fp32,
    seed: opt.Seed = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workdir>/steer.")] = None,
    device: opt.Device = "auto",
    overwrite: opt.Regenerated = False,
    as_json: opt.Json = False,
) -> None:
    """How precisely each SAE feature (and, as baselines, each neuron and random direction) steers CLIP's output."""
    from sae_vit.analysis.steer import SteerConfig, score_saes
    from sae_vit.core.defaults import workdir
    from sae_vit.io.resolve import find_saes

    alpha_list = tuple(parse_numbers(alphas, "--alphas", float))
    check_number(threshold, "--threshold", minimum=-float("inf"))
    check_number(temperature, "--temperature", strict=True)
    check_number(max_features, "--max-features", minimum=1)
    check_number(random_control, "--random-control")
    check_number(null_seeds, "--null-seeds", minimum=1)
    decide = _decision(decide_at)
    feature_list = parse_numbers(features, "--features")
    check_images(images, world)
    check_inputs(weights=weights, vocab=vocab, text_embeddings=text_embeddings)
    if not sae:
        note_default("SAEs", "every checkpoint in <workdir>/saes")
    paths = find_saes(sae)  # resolved (hf://, SAELens, sparsify) before the library checks --out
    cfg = SteerConfig(alphas=alpha_list, threshold=threshold, temperature=temperature, tokens=tokens,
                      strength_unit=strength_unit, precision=precision, null_seeds=null_seeds, decide_at=decide)
    with LazyProgress("steering", "what") as bar:
        reports = score_saes(
            paths, model, weights, vocab, text_embeddings, images, world, n_images, cfg, feature_list,
            None if full else max_features, neurons, mlp_neurons, random_control, seed, out, overwrite, device,
            progress=lambda kind, done, total: bar.update(completed=done, total=total, what=kind),
        )
    print_steer(reports)
    if reports:
        st = reports[0].summary
        vocab = "per attribute (" + ", ".join(st["attributes"]) + ")" if st["attributes"] else "flat"
        say(f"strength unit {st['strength_unit']}; sweep token norms {_round(st['strengths_token_norms']['feature'])}; "
            f"{st['n_images']} probe images, {st['vocabulary']} words, vocabulary {vocab}; "
            f"results in {out or workdir() / 'steer'}")
        say(f"rule: {st['rule']}")


def _decision(text: str) -> float | None:
    """--decide-at: ``default`` (:data:`DECIDE_AT`), ``paper`` (None: the largest alpha) or a positive number of
    token norms."""
    if text in ("default", "paper"):
        from sae_vit.analysis.steer import DECIDE_AT

        return None if text == "paper" else DECIDE_AT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        from sae_vit.core.errors import SaeVitError

        raise SaeVitError(f"--decide-at must be a positive number of mean token norms (e.g. 0.3) or 'paper', "
                          f"not {text!r}.")
    return value


def _round(xs) -> list[float]:
    return [round(x, 3) for x in xs]


def _fmt(x, digits: int = 1, pct: bool = True) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}" if pct else f"{x:.{digits}f}"


def print_steer(reports) -> None:
    """The steerability table of :class:`~sae_vit.analysis.steer.SteerReport` s (families and nulls, at the
    decision strength, with α, s and token norms), the agreement tests and the top features."""
    cols = ("layer", "tokens", "units", "alpha", "s", "token norms", "scored", "steerable", "%", "S > thr %",
            "agree %", "chance %", "S (nulls)")
    rows, tops, tests = [], [], []
    for r in reports:
        s = r.summary
        feats = r.units[(r.units.kind == "feature")].head(3)
        tops.append(f"layer {s['layer']} ({s['steer_tokens']}): " + ", ".join(
            f"{int(i)} -> {t} (S {v:.2f})" for i, t, v in zip(feats["index"], feats["target"], feats["S"], strict=True)))
        rows += [(s["layer"], s["steer_tokens"], kind, f"{k['alpha']:.1f}", f"{k['s']:.2f}",
                  f"{k['s_token_norms']:.2f}", k["scored"], k["steerable"], _fmt(k["fraction"]),
                  _fmt(k["fraction_threshold"]), _fmt(k["agreement"]), _fmt(k["chance"]), "")
                 for kind, k in s["kinds"].items()]
        t = s["decision"]["token_norms"]
        rows += [(s["layer"], s["steer_tokens"], kind, "", "", "" if kind == "null_erase_full" else f"{t:.2f}", "",
                  int(n["steerable"]), "", "", "", "", f"{n['S']:.3f}")
                 for kind, n in ((k, s["nulls"][k]) for k in ("null_noise", "null_erase", "null_erase_full"))]
        tests += [f"layer {s['layer']} ({s['steer_tokens']}) {name}: agreement difference "
                  f"{_fmt(x['difference'])} points, p = {_fmt(x['p'], 4, pct=False)} ({x['n_perm']} permutations, n = {x['n']})"
                  for name, x in s["agreement_tests"].items()]
    result(steer=[r.summary for r in reports])
    print_table("Steerability at the decision strength (steerable: S > threshold and S > the nulls; a null's "
                "'steerable' is S > threshold)", cols, rows, left=("layer", "tokens", "units"))
    for line in tests:
        say(line)
    say("top features: " + "; ".join(tops))
