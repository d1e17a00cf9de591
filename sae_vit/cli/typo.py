"""``saevit defend-typo``: typographic attacks and the SAE text-feature defence (library:
:mod:`sae_vit.analysis.typo`).

Four sub-commands, one per mode; the first is the default, so ``saevit defend-typo photo.png`` classifies:

- ``classify IMAGE... [--classes a,b,c] [--sae SAE --features FILE]``: top class probabilities without and with
  the defence, side by side;
- ``attack IMAGES... --word W --out DIR``: write attacked images (PAINT layout);
- ``eval world [--sae SAE ...]`` or ``eval DIR``: the benchmark protocol;
- ``make-assets [--out DIR]``: train and select the shipped SAE and feature file.

The spellings of earlier versions, ``--eval world|DIR`` and ``--make-assets``, still mean ``eval`` and
``make-assets`` (docs and scripts use them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from sae_vit.cli._options import SAE_HELP, OverwriteOpt, TextEmbeddingsOpt
from sae_vit.cli._ui import check_inputs, command, error, note, out_console, parse_layers, plain, say
from sae_vit.core.defaults import DEFAULT_MODEL, workdir
from sae_vit.core.errors import SaeVitError

MODES = "Give exactly one of: image file(s), 'attack IMAGES...', 'eval world|DIR' (--eval), or 'make-assets'."


def route(args: list[str], commands: set[str]) -> list[str]:
    """The argument list with its mode made explicit: ``--eval X`` -> ``eval X``, ``--make-assets`` ->
    ``make-assets``, and anything that does not start with a sub-command (or ``--help``) -> ``classify ...``."""
    modes, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--eval" and i + 1 < len(args):
            modes.append(["eval", args[i + 1]])
            i += 2
            continue
        if arg.startswith("--eval="):
            modes.append(["eval", arg.removeprefix("--eval=")])
        elif arg == "--make-assets":
            modes.append(["make-assets"])
        else:
            rest.append(arg)
        i += 1
    explicit = bool(rest) and rest[0] in commands
    if len(modes) + explicit > 1:
        raise SaeVitError(MODES)
    if modes:
        return [*modes[0], *rest]
    if not rest or explicit or rest[0] == "--help":
        return rest
    return ["classify", *rest]


class _ModeGroup(TyperGroup):
    """A group whose default sub-command is ``classify`` (see :func:`route`)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        try:
            args = route(list(args), set(self.commands))
        except SaeVitError as exc:
            error(str(exc))
            raise typer.Exit(2) from None
        return super().parse_args(ctx, args)


typo_app = typer.Typer(
    cls=_ModeGroup,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="""Typographic attacks and their defence by suppressing text-reading SAE features.

    \b
    saevit defend-typo photo.png --classes "dog,cat,bird"          (same as: classify photo.png ...)
    saevit defend-typo attack photos/ --word cat --out attacked/
    saevit defend-typo eval world --sae saes/layer_4/all/sae.safetensors --sae saes/layer_6/all/sae.safetensors
    saevit defend-typo eval attacked/ --sae SAE --features FILE
    saevit defend-typo make-assets --out DIR

    The earlier spellings --eval world|DIR and --make-assets still work.
    """,
)

SaeOpt = Annotated[str | None, typer.Option(
    "--sae", help=f"The SAE: {SAE_HELP}. Default: <workdir>/typo or the shipped one.")]
FeaturesOpt = Annotated[Path | None, typer.Option(
    "--features", help="Text-feature JSON. Default: the one beside the SAE (or shipped with it).")]
NFeaturesOpt = Annotated[int | None, typer.Option(
    "--n-features", "--n", min=0, help="Suppress the top N features (default: the N chosen on validation).")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Backbone (default: the SAE's model, else toy). For toy, --weights may be a toy CLIP file.")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Local weights for --model.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]
NDiscoveryOpt = Annotated[int, typer.Option("--n-discovery", min=8, help="Discovery images (world).")]
NValOpt = Annotated[int, typer.Option("--n-val", min=8, help="Validation images (world).")]
NTestOpt = Annotated[int, typer.Option("--n-test", min=8, help="Test images per test set (world).")]
SeedOpt = Annotated[int, typer.Option("--seed")]


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


def _torch_device(device: str) -> str:
    """Cap torch's threads (the world protocol gains nothing past 8) and resolve ``auto`` to a device name."""
    import torch

    from sae_vit.core.dist import resolve_device

    torch.set_num_threads(min(torch.get_num_threads(), 8))
    return str(resolve_device(device))


def _local_sae(sae: str | None) -> Path | None:
    """An SAE reference (``hf://``, SAELens, sparsify ...) as a local sae-vit checkpoint; None stays None."""
    from sae_vit.io.resolve import resolve_sae_path

    return None if sae is None else resolve_sae_path(sae)


@command(typo_app, "classify")
def classify_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class names. Default for the toy CLIP: the world's shapes.")] = None,
    sae: SaeOpt = None,
    features: FeaturesOpt = None,
    n_features: NFeaturesOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    text_embeddings: TextEmbeddingsOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Classes shown per image.")] = 5,
    device: DeviceOpt = "auto",
) -> None:
    """Top class probabilities of each image without and with the defence (the default sub-command)."""
    check_inputs(features=features, weights=weights, text_embeddings=text_embeddings)
    _classify(images, classes, _local_sae(sae), features, n_features, model, weights, text_embeddings, top,
              _torch_device(device))


@command(typo_app, "attack")
def attack_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively) to attack.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (PAINT layout + metadata.csv).")],
    word: Annotated[str | None, typer.Option(
        "--word", help="The word to write (default: a random wrong class of --classes).")] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class names to draw the written word from.")] = None,
    font_size: Annotated[str | None, typer.Option(
        "--font-size", help="Font size range as fractions of the image side, e.g. 0.2,0.28.")] = None,
    palette: Annotated[str | None, typer.Option(
        "--palette", help="Fill/stroke colours to draw from (two different ones per image).")] = None,
    position: Annotated[str, typer.Option("--position", help="random, top, middle or bottom.")] = "random",
    crop: Annotated[bool, typer.Option("--crop/--no-crop", help="Centre-crop to a square first.")] = True,
    font: Annotated[Path | None, typer.Option("--font", help="A .ttf font (default: Pillow's).")] = None,
    control: Annotated[bool, typer.Option(
        "--control", help="Also write same-placement pseudo-word controls and the clean crops.")] = False,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write typographic attacks on images: a word painted on each (PAINT layout)."""
    _attack(images, word, out, classes, font_size, palette, position, crop, font, control, seed, overwrite)


@command(typo_app, "eval")
def eval_cmd(
    target: Annotated[str, typer.Argument(
        metavar="world|DIR", help="'world' (the full protocol on the synthetic world) or a typographic folder "
                                  "(PAINT / RTA-100 layout).")],
    sae: Annotated[list[str] | None, typer.Option(
        "--sae", help=f"The SAE: {SAE_HELP}. With world: repeatable, one per layer. Default: the shipped one.")]
    = None,
    features: FeaturesOpt = None,
    n_features: NFeaturesOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="world: the feature JSON to write (default: <sae>.typo.json).")] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    text_embeddings: TextEmbeddingsOpt = None,
    n_discovery: NDiscoveryOpt = 512,
    n_val: NValOpt = 600,
    n_test: NTestOpt = 600,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="world: run baselines.")] = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Evaluate the defence: the world protocol (choose layer and N on validation, write the feature file), or
    accuracy and attack success rate on a typographic folder."""
    check_inputs(features=features, weights=weights, text_embeddings=text_embeddings)
    if target == "world":
        paths = [_local_sae(s) for s in sae] if sae else None
        _eval_world(paths, out, model, weights, text_embeddings, n_discovery, n_val, n_test, baselines, seed,
                    _torch_device(device), overwrite)
        return
    if sae and len(sae) > 1:
        raise SaeVitError("Pass one --sae with eval DIR (several are for eval world).")
    check_inputs(eval=target)
    _eval_folder(target, _local_sae(sae[0] if sae else None), features, n_features, model, weights, text_embeddings,
                 _torch_device(device))


@command(typo_app, "make-assets")
def make_assets_cmd(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for typo_sae.safetensors and typo_features.json (default <workdir>/typo).")] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    layers: Annotated[str, typer.Option("--layers", help="Blocks to train SAEs on, or 'all'.")] = "2,4,6,8",
    n_discovery: NDiscoveryOpt = 512,
    n_val: NValOpt = 600,
    n_test: NTestOpt = 600,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train SAEs on the toy CLIP, choose layer and features on validation, write the shipped SAE and feature
    file."""
    check_inputs(weights=weights)
    _torch_device("cpu")
    _make_assets(out, model, weights, layers, n_discovery, n_val, n_test, seed, overwrite)


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

    cfg = _attack_config(font_size, palette, position, crop, font)
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    path = write_attacks(images, out, word, class_list, cfg, control, seed, overwrite)
    n = len(list(path.glob("*.png")))
    say(f"wrote {n} images and metadata.csv (path,label,text,kind) -> {path}")


def _bundle(model, weights, text_embeddings, device, sae_model: str | None = None):
    from sae_vit.analysis.typo import load_model

    return load_model(model or sae_model or DEFAULT_MODEL, weights, text_embeddings, device)


def _class_list(classes: str | None, bundle) -> list[str]:
    if classes is None:
        if bundle.backbone.name != "toy":
            raise SaeVitError('Pass --classes "dog,cat,..." (class names to choose from).')
        from sae_vit.world.scenes import SHAPES

        return list(SHAPES)
    class_list = list(dict.fromkeys(c.strip() for c in classes.split(",") if c.strip()))
    if len(class_list) < 2:
        raise SaeVitError('--classes needs at least two names, e.g. --classes "dog,cat".')
    return class_list


def _classify(images, classes, sae, features, n, model, weights, text_embeddings, top, device) -> None:
    from rich.table import Table

    from sae_vit.analysis.typo import classify_image, defence_from_files, open_image, resolve_features

    for image in images:  # fail fast on a bad path, before any model loads
        open_image(image)
    sae_path, feat_path = resolve_features(sae, features)
    defence, feats = defence_from_files(sae_path, feat_path, n, device)
    bundle = _bundle(model, weights, text_embeddings, device, defence.sae.cfg.model)
    class_list = _class_list(classes, bundle)
    note(f"model: {bundle.description}; SAE: {sae_path} (layer {defence.sae.cfg.layer}); "
         f"suppressing {len(defence.features)} text features from {feats['path']}")
    for image in images:
        before, after = classify_image(bundle, image, class_list, defence)
        order = torch_topk(before, after, top)
        table = Table(title=plain(image)[0])
        table.add_column("class")
        table.add_column("no defence", justify="right")
        table.add_column("defended", justify="right")
        for i in order:
            mark_b = " ◀" if i == int(before.argmax()) else ""
            mark_a = " ◀" if i == int(after.argmax()) else ""
            table.add_row(*plain(class_list[i], f"{100 * float(before[i]):.1f}%{mark_b}",
                                 f"{100 * float(after[i]):.1f}%{mark_a}"))
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


def _eval_world(paths, out, model, weights, text_embeddings, n_discovery, n_val, n_test, baselines, seed, device,
                overwrite) -> None:
    from sae_vit.analysis.typo import EvalConfig, default_pair, run_world_eval, write_report_features
    from sae_vit.core.sae import SAE

    paths = paths or [default_pair()[0]]
    saes = [(p, SAE.load(p, device)) for p in paths]
    bundle = _bundle(model, weights, text_embeddings, device, saes[0][1].cfg.model)
    cfg = EvalConfig(n_discovery=n_discovery, n_val=n_val, n_test=n_test, seed=seed, baselines=baselines)
    targets = _feature_out(paths, out)  # checked once every input is known to be good
    if not overwrite:
        for t in targets:
            if t.exists():
                raise SaeVitError(f"{t} already exists; pass --overwrite to replace it or choose another --out.")
    start = time.perf_counter()
    report = run_world_eval(bundle, saes, cfg, progress=lambda m: note(m, "cyan"))
    chosen = next(s for p, s in saes if str(p) == report.sae_path)
    target = targets[0] if out is not None else targets[[str(p) for p in paths].index(report.sae_path)]
    path = write_report_features(report, chosen, target, cfg, overwrite=overwrite)
    print_report(report)
    say(f"model: {bundle.description}; chosen layer {report.layer}, N={report.n} on the validation split; "
        f"features -> {path} ({time.perf_counter() - start:.0f} s)")


def print_report(report) -> None:
    """The validation sweep and the test tables of a :class:`~sae_vit.analysis.typo.TypoReport`."""
    from rich.table import Table

    sweep = Table(title="Validation sweep (discovery recipe): layer x N suppressed features")
    for col in ("layer", "N", "clean", "attacked", "ASR"):
        sweep.add_column(col, justify="right")
    for r in report.sweep:
        chosen = r["layer"] == report.layer and r["n"] == report.n
        style = "bold green" if chosen else None
        sweep.add_row(*plain(r["layer"], r["n"], _pct(r["clean"]), _pct(r["attacked"]), _pct(r["asr"])), style=style)
    out_console.print(sweep)
    for name, rows in report.results.items():
        table = Table(title=plain(f"{name}: zero-shot accuracy % and attack success rate %")[0])
        for col in ("defence", "clean", "attacked", "control", "ASR", "setting"):
            table.add_column(col, justify="left" if col in ("defence", "setting") else "right")
        for d, m in rows.items():
            table.add_row(*plain(d, _pct(m.clean), _pct(m.attacked), _pct(m.control), _pct(m.asr), report.settings[d]))
        out_console.print(table)


def _eval_folder(directory, sae, features, n, model, weights, text_embeddings, device) -> None:
    from rich.table import Table

    from sae_vit.analysis.typo import defence_from_files, folder_eval, resolve_features

    sae_path, feat_path = resolve_features(sae, features)
    defence, _ = defence_from_files(sae_path, feat_path, n, device)
    bundle = _bundle(model, weights, text_embeddings, device, defence.sae.cfg.model)
    res = folder_eval(bundle, directory, defence)
    table = Table(title=plain(f"{directory}: {len(res['classes'])} classes (labels and written words)")[0])
    for col in ("defence", "clean", "attacked", "ASR"):
        table.add_column(col, justify="left" if col == "defence" else "right")
    for d, label in (("none", "no defence"), ("sae", defence.describe())):
        m = res[d]
        table.add_row(*plain(label, _pct(m["clean"]), _pct(m["attacked"]), _pct(m["asr"])))
    out_console.print(table)
    say(f"model: {bundle.description}; SAE: {sae_path}; {res['none']['n_attacked']} attacked, "
        f"{res['none']['n_clean']} clean images")


def _make_assets(out, model, weights, layers, n_discovery, n_val, n_test, seed, overwrite) -> None:
    from sae_vit.analysis.typo import AssetConfig, EvalConfig
    from sae_vit.pipeline import make_typo_assets

    bundle = _bundle(model, weights, None, "cpu")
    out = Path(out) if out is not None else workdir() / "typo"
    n_layers = bundle.backbone.n_layers
    wanted = parse_layers(layers)
    wanted = list(range(n_layers)) if wanted == "all" else wanted
    if not wanted or max(wanted) >= n_layers:
        raise SaeVitError(f"--layers {layers!r} is out of range; {bundle.description} has blocks 0..{n_layers - 1}.")
    cfg = AssetConfig(layers=tuple(wanted), seed=seed)
    eval_cfg = EvalConfig(n_discovery=n_discovery, n_val=n_val, n_test=n_test, seed=seed)
    report, sae_path, feat_path = make_typo_assets(
        bundle, out, workdir() / "typo_work", cfg, eval_cfg, overwrite, progress=lambda m: note(m, "cyan"))
    print_report(report)
    say(f"model: {bundle.description}; layer {report.layer}, N={report.n}; wrote {sae_path} and {feat_path}")
