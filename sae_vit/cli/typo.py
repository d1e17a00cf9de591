"""``saevit defend-typo``: typographic attacks and the SAE text-feature defence (library: :mod:`sae_vit.typo`).

One command, four spellings (Typer cannot mix a positional image with sub-commands, so the first positional
decides):

- ``saevit defend-typo image.png [--classes a,b,c] [--sae SAE --features FILE]``: top class probabilities
  without and with the defence, side by side;
- ``saevit defend-typo attack IMAGES... --word W --out DIR``: write attacked images (PAINT layout);
- ``saevit defend-typo --eval world [--sae SAE ...]`` or ``--eval DIR``: the benchmark protocol;
- ``saevit defend-typo --make-assets [--out DIR]``: train and select the shipped SAE and feature file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sae_vit.cli._ui import console, out_console
from sae_vit.core.defaults import DEFAULT_MODEL, workdir
from sae_vit.core.errors import SaeVitError


def _floats(text: str | None, what: str, n: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise SaeVitError(f"Could not read {what} {text!r}; give {n} comma-separated numbers, e.g. 0.2,0.28.") from exc
    if len(values) != n:
        raise SaeVitError(f"{what} takes {n} comma-separated numbers (got {text!r}), e.g. 0.2,0.28.")
    return values


def _pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.1f}"


def register(app: typer.Typer, command) -> None:
    """Add ``defend-typo`` to ``app``."""

    @command("defend-typo", no_args_is_help=True)
    def defend_typo_cmd(
        args: Annotated[list[str] | None, typer.Argument(
            metavar="IMAGE... | attack IMAGES...",
            help="Image file(s) to classify, or the word 'attack' followed by images/folders to attack.")] = None,
        classes: Annotated[str | None, typer.Option(
            "--classes", help="Comma-separated class names. Default for the toy CLIP: the world's shapes.")] = None,
        sae: Annotated[list[str] | None, typer.Option(
            "--sae", help="SAE checkpoint (repeatable with --eval world: one per layer). Default: the shipped one.")] = None,
        features: Annotated[Path | None, typer.Option(
            "--features", help="Text-feature JSON. Default: the one beside the SAE (or shipped with it).")] = None,
        n: Annotated[int | None, typer.Option(
            "--n", min=0, help="Suppress the top N features (default: the N chosen on validation).")] = None,
        eval_: Annotated[str | None, typer.Option(
            "--eval", help="'world' (full protocol on the synthetic world) or a typographic folder (PAINT/RTA-100).")] = None,
        make_assets: Annotated[bool, typer.Option(
            "--make-assets", help="Train SAEs on the toy CLIP, select layer and features, write typo_sae.safetensors "
                                  "and typo_features.json into --out (default <workdir>/typo).")] = False,
        word: Annotated[str | None, typer.Option(
            "--word", help="attack: the word to write (default: a random wrong class of --classes).")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="attack: output folder; --eval world: feature JSON path; --make-assets: folder.")] = None,
        font_size: Annotated[str | None, typer.Option(
            "--font-size", help="attack: font size range as fractions of the image side, e.g. 0.2,0.28.")] = None,
        palette: Annotated[str | None, typer.Option(
            "--palette", help="attack: fill/stroke colours to draw from (two different ones per image).")] = None,
        position: Annotated[str, typer.Option(
            "--position", help="attack: random, top, middle or bottom.")] = "random",
        crop: Annotated[bool, typer.Option("--crop/--no-crop", help="attack: centre-crop to a square first.")] = True,
        font: Annotated[Path | None, typer.Option("--font", help="attack: a .ttf font (default: Pillow's).")] = None,
        control: Annotated[bool, typer.Option(
            "--control", help="attack: also write same-placement pseudo-word controls and the clean crops.")] = False,
        model: Annotated[str | None, typer.Option(
            "--model", help="Backbone (default: the SAE's model, else toy). For toy, --weights may be a toy CLIP file.")] = None,
        weights: Annotated[Path | None, typer.Option("--weights", help="Local weights for --model.")] = None,
        text_embeddings: Annotated[Path | None, typer.Option(
            "--text-embeddings", help="safetensors with 'embeddings' [n, d] and 'names' (instead of a text tower).")] = None,
        top: Annotated[int, typer.Option("--top", min=1, help="Classes shown per image.")] = 5,
        n_discovery: Annotated[int, typer.Option("--n-discovery", min=8, help="--eval world: discovery images.")] = 512,
        n_val: Annotated[int, typer.Option("--n-val", min=8, help="--eval world: validation images.")] = 600,
        n_test: Annotated[int, typer.Option("--n-test", min=8, help="--eval world: test images per test set.")] = 600,
        layers: Annotated[str, typer.Option("--layers", help="--make-assets: blocks to train SAEs on.")] = "2,4,6,8",
        baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="--eval world: run baselines.")] = True,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        device: Annotated[str, typer.Option("--device")] = "cpu",
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    ) -> None:
        """Typographic attacks and their defence by suppressing text-reading SAE features.

        \b
        saevit defend-typo photo.png --classes "dog,cat,bird"
        saevit defend-typo attack photos/ --word cat --out attacked/
        saevit defend-typo --eval world --sae saes/layer_4/all/sae.safetensors --sae saes/layer_6/all/sae.safetensors
        saevit defend-typo --eval attacked/ --sae SAE --features FILE
        """
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), 8))
        args = list(args or [])
        modes = sum([bool(make_assets), eval_ is not None, bool(args)])
        if modes != 1:
            raise SaeVitError(
                "Give exactly one of: image file(s), 'attack IMAGES...', --eval world|DIR, or --make-assets."
            )
        if args and args[0] == "attack" and not Path("attack").is_file():
            _attack(args[1:], word, out, classes, font_size, palette, position, crop, font, control, seed, overwrite)
        elif make_assets:
            _make_assets(out, model, weights, layers, n_discovery, n_val, n_test, seed, overwrite)
        elif eval_ == "world":
            _eval_world(sae, out, model, weights, text_embeddings, n_discovery, n_val, n_test, baselines, seed,
                        device, overwrite)
        elif eval_ is not None:
            _eval_folder(eval_, sae, features, n, model, weights, text_embeddings, device)
        else:
            _classify(args, classes, sae, features, n, model, weights, text_embeddings, top, device)


def _attack_config(font_size, palette, position, crop, font):
    from sae_vit.analysis.typo import AttackConfig

    kw = {"position": position, "crop": crop, "font": str(font) if font else None}
    if font_size is not None:
        kw["font_size"] = _floats(font_size, "--font-size", 2)
    if palette is not None:
        kw["palette"] = tuple(c.strip() for c in palette.split(",") if c.strip())
    return AttackConfig(**kw).validate()


def _attack(images, word, out, classes, font_size, palette, position, crop, font, control, seed, overwrite) -> None:
    from sae_vit.analysis.typo import write_attacks

    if not images:
        raise SaeVitError("Nothing to attack; give image files or folders after 'attack'.")
    if out is None:
        raise SaeVitError("Pass --out DIR: where the attacked images are written.")
    cfg = _attack_config(font_size, palette, position, crop, font)
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    path = write_attacks(images, out, word, class_list, cfg, control, seed, overwrite)
    n = len(list(path.glob("*.png")))
    out_console.print(f"wrote {n} images and metadata.csv (path,label,text,kind) -> {path}", highlight=False)


def _bundle(model, weights, text_embeddings, device, sae_model: str | None = None):
    from sae_vit.analysis.typo import load_model

    return load_model(model or sae_model or DEFAULT_MODEL, weights, text_embeddings, device)


def _classify(images, classes, sae, features, n, model, weights, text_embeddings, top, device) -> None:
    from rich.table import Table

    from sae_vit.analysis.typo import classify_image, defence_from_files, open_image, resolve_features

    for image in images:  # fail fast on a bad path, before any model loads
        open_image(image)
    if sae and len(sae) > 1:
        raise SaeVitError("Pass one --sae to classify images (several are for --eval world).")
    sae_path, feat_path = resolve_features(sae[0] if sae else None, features)
    defence, feats = defence_from_files(sae_path, feat_path, n, device)
    bundle = _bundle(model, weights, text_embeddings, device, defence.sae.cfg.model)
    if classes is None:
        if bundle.backbone.name != "toy":
            raise SaeVitError('Pass --classes "dog,cat,..." (class names to choose from).')
        from sae_vit.world.scenes import SHAPES

        class_list = list(SHAPES)
    else:
        class_list = list(dict.fromkeys(c.strip() for c in classes.split(",") if c.strip()))
        if len(class_list) < 2:
            raise SaeVitError('--classes needs at least two names, e.g. --classes "dog,cat".')
    console.print(f"[dim]model: {bundle.description}; SAE: {sae_path} (layer {defence.sae.cfg.layer}); "
                  f"suppressing {len(defence.features)} text features from {feats['path']}[/]", highlight=False)
    for image in images:
        before, after = classify_image(bundle, image, class_list, defence)
        order = torch_topk(before, after, top)
        table = Table(title=f"{image}")
        table.add_column("class")
        table.add_column("no defence", justify="right")
        table.add_column("defended", justify="right")
        for i in order:
            mark_b = " ◀" if i == int(before.argmax()) else ""
            mark_a = " ◀" if i == int(after.argmax()) else ""
            table.add_row(class_list[i], f"{100 * float(before[i]):.1f}%{mark_b}", f"{100 * float(after[i]):.1f}%{mark_a}")
        out_console.print(table)


def torch_topk(before, after, top: int) -> list[int]:
    """Class indices to show: by the larger of the two probabilities, highest first."""
    import torch

    score = torch.maximum(before, after)
    return [int(i) for i in score.argsort(descending=True)[:top]]


def _feature_out(sae_paths, out):
    from sae_vit.analysis.typo import asset_dir, features_path_for

    if out is not None:
        return [Path(out)]
    targets = []
    for p in sae_paths:
        t = features_path_for(p)
        if Path(p).resolve().parent == asset_dir().resolve():
            t = workdir() / "typo" / t.name
        targets.append(t)
    return targets


def _eval_world(sae, out, model, weights, text_embeddings, n_discovery, n_val, n_test, baselines, seed, device,
                overwrite) -> None:
    from sae_vit.analysis.typo import EvalConfig, default_pair, run_world_eval, write_report_features
    from sae_vit.core.sae import SAE, resolve_sae_path

    paths = [resolve_sae_path(s) for s in sae] if sae else [default_pair()[0]]
    targets = _feature_out(paths, out)
    if not overwrite:
        for t in targets:
            if t.exists():
                raise SaeVitError(f"{t} already exists; pass --overwrite to replace it or choose another --out.")
    saes = [(p, SAE.load(p, device)) for p in paths]
    bundle = _bundle(model, weights, text_embeddings, device, saes[0][1].cfg.model)
    cfg = EvalConfig(n_discovery=n_discovery, n_val=n_val, n_test=n_test, seed=seed, baselines=baselines)
    start = time.perf_counter()
    report = run_world_eval(bundle, saes, cfg, progress=lambda m: console.print(f"[cyan]{m}[/]", highlight=False))
    chosen = next(s for p, s in saes if str(p) == report.sae_path)
    target = targets[0] if out is not None else targets[[str(p) for p in paths].index(report.sae_path)]
    path = write_report_features(report, chosen, target, cfg, overwrite=overwrite)
    print_report(report)
    out_console.print(f"model: {bundle.description}; chosen layer {report.layer}, N={report.n} on the validation "
                      f"split; features -> {path} ({time.perf_counter() - start:.0f} s)", highlight=False)


def print_report(report) -> None:
    """The validation sweep and the test tables of a :class:`~sae_vit.typo.TypoReport`."""
    from rich.table import Table

    sweep = Table(title="Validation sweep (discovery recipe): layer x N suppressed features")
    for col in ("layer", "N", "clean", "attacked", "ASR"):
        sweep.add_column(col, justify="right")
    for r in report.sweep:
        chosen = r["layer"] == report.layer and r["n"] == report.n
        style = "bold green" if chosen else None
        sweep.add_row(str(r["layer"]), str(r["n"]), _pct(r["clean"]), _pct(r["attacked"]), _pct(r["asr"]), style=style)
    out_console.print(sweep)
    for name, rows in report.results.items():
        table = Table(title=f"{name}: zero-shot accuracy % and attack success rate %")
        for col in ("defence", "clean", "attacked", "control", "ASR", "setting"):
            table.add_column(col, justify="left" if col in ("defence", "setting") else "right")
        for d, m in rows.items():
            table.add_row(d, _pct(m.clean), _pct(m.attacked), _pct(m.control), _pct(m.asr), report.settings[d])
        out_console.print(table)


def _eval_folder(directory, sae, features, n, model, weights, text_embeddings, device) -> None:
    from rich.table import Table

    from sae_vit.analysis.typo import defence_from_files, folder_eval, resolve_features

    if sae and len(sae) > 1:
        raise SaeVitError("Pass one --sae with --eval DIR (several are for --eval world).")
    sae_path, feat_path = resolve_features(sae[0] if sae else None, features)
    defence, _ = defence_from_files(sae_path, feat_path, n, device)
    bundle = _bundle(model, weights, text_embeddings, device, defence.sae.cfg.model)
    res = folder_eval(bundle, directory, defence)
    table = Table(title=f"{directory}: {len(res['classes'])} classes (labels and written words)")
    for col in ("defence", "clean", "attacked", "ASR"):
        table.add_column(col, justify="left" if col == "defence" else "right")
    for d, label in (("none", "no defence"), ("sae", defence.describe())):
        m = res[d]
        table.add_row(label, _pct(m["clean"]), _pct(m["attacked"]), _pct(m["asr"]))
    out_console.print(table)
    out_console.print(f"model: {bundle.description}; SAE: {sae_path}; {res['none']['n_attacked']} attacked, "
                      f"{res['none']['n_clean']} clean images", highlight=False)


def _make_assets(out, model, weights, layers, n_discovery, n_val, n_test, seed, overwrite) -> None:
    from sae_vit.analysis.typo import AssetConfig, EvalConfig
    from sae_vit.cli._ui import parse_layers
    from sae_vit.pipeline import make_typo_assets

    bundle = _bundle(model, weights, None, "cpu")
    out = Path(out) if out is not None else workdir() / "typo"
    wanted = parse_layers(layers)
    cfg = AssetConfig(layers=tuple(range(bundle.backbone.n_layers) if wanted == "all" else wanted), seed=seed)
    eval_cfg = EvalConfig(n_discovery=n_discovery, n_val=n_val, n_test=n_test, seed=seed)
    report, sae_path, feat_path = make_typo_assets(
        bundle, out, workdir() / "typo_work", cfg, eval_cfg, overwrite,
        progress=lambda m: console.print(f"[cyan]{m}[/]", highlight=False))
    print_report(report)
    out_console.print(f"model: {bundle.description}; layer {report.layer}, N={report.n}; wrote {sae_path} and "
                      f"{feat_path}", highlight=False)
