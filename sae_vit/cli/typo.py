"""``saevit defend-typo``: typographic attacks and the SAE text-feature defence (library:
:mod:`sae_vit.analysis.typo`).

One sub-command per mode, listed with examples in ``typo_app``'s help; ``classify`` is the default, so
``saevit defend-typo photo.png`` classifies. The spellings of earlier versions, ``--eval world|DIR`` and
``--make-assets``, still mean ``eval`` and ``make-assets`` (docs and scripts use them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

import sae_vit.cli._options as opt
from sae_vit.cli._ui import (
    check_inputs,
    note,
    parse_layers,
    parse_names,
    parse_numbers,
    print_table,
    result,
    say,
)
from sae_vit.core.defaults import DEFAULT_MODEL, workdir
from sae_vit.core.errors import SaeVitError

MODES = "Give exactly one of: image file(s), 'attack IMAGES...', 'eval world|DIR' (--eval), or 'make-assets'."


def route(args: list[str], commands: set[str]) -> list[str]:
    """The argument list with its mode made explicit: ``--eval X`` -> ``eval X``, ``--make-assets`` ->
    ``make-assets``, and anything that does not start with a sub-command (or ``--help``) -> ``classify ...``."""
    modes, rest, it = [], [], iter(args)
    for arg in it:
        if arg.startswith("--eval="):
            modes.append(["eval", arg.removeprefix("--eval=")])
        elif arg == "--make-assets":
            modes.append(["make-assets"])
        elif arg == "--eval" and (value := next(it, None)) is not None:
            modes.append(["eval", value])
        else:  # a trailing --eval with no value is left for the parser to refuse
            rest.append(arg)
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
        return super().parse_args(ctx, route(list(args), set(self.commands)))  # errors: see app._Root


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
    "--sae", help=f"The SAE: {opt.SAE_HELP}. Default: <workdir>/typo or the shipped one.")]
FeaturesOpt = Annotated[Path | None, typer.Option(
    "--features", help="Text-feature JSON. Default: the one beside the SAE (or shipped with it).")]
NFeaturesOpt = Annotated[int | None, typer.Option(
    "--n-features", "--n", min=0, help="Suppress the top N features (default: the N chosen on validation).")]
NDiscoveryOpt = Annotated[int, typer.Option("--n-discovery", min=8, help="Discovery images (world).")]
NValOpt = Annotated[int, typer.Option("--n-val", min=8, help="Validation images (world).")]
NTestOpt = Annotated[int, typer.Option("--n-test", min=8, help="Test images per test set (world).")]


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


def _bundle(model, weights, text_embeddings, device, sae_model: str | None = None):
    from sae_vit.analysis.typo import load_model

    return load_model(model or sae_model or DEFAULT_MODEL, weights, text_embeddings, device)


def _class_list(classes: str | None, bundle) -> list[str]:
    if classes is None:
        if bundle.backbone.name != "toy":
            raise SaeVitError('Pass --classes "dog,cat,..." (class names to choose from).')
        from sae_vit.world.scenes import SHAPES

        return list(SHAPES)
    class_list = list(dict.fromkeys(parse_names(classes)))
    if len(class_list) < 2:
        raise SaeVitError('--classes needs at least two names, e.g. --classes "dog,cat".')
    return class_list


def _prob(p, best: bool) -> str:
    return f"{100 * float(p):.1f}%" + (" ◀" if best else "")


@typo_app.command("classify")
def classify_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class names. Default for the toy CLIP: the world's shapes.")] = None,
    sae: SaeOpt = None,
    features: FeaturesOpt = None,
    n_features: NFeaturesOpt = None,
    model: opt.SaeModel = None,
    weights: opt.Weights = None,
    text_embeddings: opt.TextEmbeddings = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Classes shown per image.")] = 5,
    device: opt.Device = "auto",
    as_json: opt.Json = False,
) -> None:
    """Top class probabilities of each image without and with the defence (the default sub-command)."""
    import torch

    from sae_vit.analysis.typo import (
        classify_image,
        defence_from_files,
        input_side,
        open_image,
        resize_warning,
        resolve_features,
    )

    check_inputs(features=features, weights=weights, text_embeddings=text_embeddings)
    local_sae = _local_sae(sae)
    device = _torch_device(device)
    sizes = [open_image(image).size for image in images]  # fail fast on a bad path, before any model loads
    sae_path, feat_path = resolve_features(local_sae, features)
    defence, feats = defence_from_files(sae_path, feat_path, n_features, device)
    bundle = _bundle(model, weights, text_embeddings, device, defence.sae.cfg.model)
    class_list = _class_list(classes, bundle)
    note(f"model: {bundle.description}; SAE: {sae_path} (layer {defence.sae.cfg.layer}); "
         f"suppressing {len(defence.features)} text features from {feats['path']}")
    side, rows, warnings = input_side(bundle.backbone), [], []
    for image, size in zip(images, sizes, strict=True):
        if (warning := resize_warning(image, size, side)) is not None:
            note(f"warning: {warning}", "yellow")
            warnings.append(warning)
        before, after = classify_image(bundle, image, class_list, defence)
        b, a = int(before.argmax()), int(after.argmax())
        order = torch.maximum(before, after).argsort(descending=True)[:top].tolist()  # by the larger one
        rows.append({"image": str(image), "no defence": class_list[b], "defended": class_list[a],
                     "probabilities": {class_list[i]: {"no defence": float(before[i]), "defended": float(after[i])}
                                       for i in order}})
        print_table(image, ("class", "no defence", "defended"), left=("class",), rows=[
            (class_list[i], _prob(before[i], i == b), _prob(after[i], i == a)) for i in order])
    result(classes=class_list, images=rows, warnings=warnings)


@typo_app.command("attack")
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
    position: Annotated[opt.Position, typer.Option("--position", help="Where the word goes.")] = opt.Position.random,
    crop: Annotated[bool, typer.Option("--crop/--no-crop", help="Centre-crop to a square first.")] = True,
    font: Annotated[Path | None, typer.Option("--font", help="A .ttf font (default: Pillow's).")] = None,
    control: Annotated[bool, typer.Option(
        "--control", help="Also write same-placement pseudo-word controls and the clean crops.")] = False,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """Write typographic attacks on images: a word painted on each (PAINT layout)."""
    from sae_vit.analysis.typo import AttackConfig, write_attacks

    kw = {"position": position, "crop": crop, "font": str(font) if font else None}
    if font_size is not None:
        kw["font_size"] = tuple(parse_numbers(font_size, "--font-size", float))
        if len(kw["font_size"]) != 2:
            raise SaeVitError(f"--font-size takes two numbers (got {font_size!r}), e.g. 0.2,0.28.")
    if palette is not None:
        kw["palette"] = tuple(parse_names(palette))
    cfg = AttackConfig(**kw).validate()
    path = write_attacks(images, out, word, parse_names(classes) or None, cfg, control, seed, overwrite)
    say(f"wrote {len(list(path.glob('*.png')))} images and metadata.csv (path,label,text,kind) -> {path}")


@typo_app.command("eval")
def eval_cmd(
    target: Annotated[str, typer.Argument(
        metavar="world|DIR", help="'world' (the full protocol on the synthetic world) or a typographic folder "
                                  "(PAINT / RTA-100 layout).")],
    sae: Annotated[list[str] | None, typer.Option(
        "--sae", help=f"The SAE: {opt.SAE_HELP}. With world: repeatable, one per layer. Default: the shipped "
                      "one.")] = None,
    features: FeaturesOpt = None,
    n_features: NFeaturesOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="world: the feature JSON to write, regenerated on every run (default: <sae>.typo.json).")
    ] = None,
    model: opt.SaeModel = None,
    weights: opt.Weights = None,
    text_embeddings: opt.TextEmbeddings = None,
    n_discovery: NDiscoveryOpt = 512,
    n_val: NValOpt = 600,
    n_test: NTestOpt = 600,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="world: run baselines.")] = True,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    overwrite: opt.Regenerated = False,
    as_json: opt.Json = False,
) -> None:
    """Evaluate the defence: the world protocol (choose layer and N on validation, write the feature file), or
    accuracy and attack success rate on a typographic folder."""
    from sae_vit.analysis.typo import EvalConfig

    check_inputs(features=features, weights=weights, text_embeddings=text_embeddings)
    if target == "world":
        cfg = EvalConfig(n_discovery=n_discovery, n_val=n_val, n_test=n_test, seed=seed, baselines=baselines)
        paths = [_local_sae(s) for s in sae] if sae else None
        _eval_world(paths, out, model, weights, text_embeddings, cfg, _torch_device(device))
        return
    if sae and len(sae) > 1:
        raise SaeVitError("Pass one --sae with eval DIR (several are for eval world).")
    check_inputs(eval=target)
    _eval_folder(target, _local_sae(sae[0] if sae else None), features, n_features, model, weights, text_embeddings,
                 _torch_device(device))


@typo_app.command("make-assets")
def make_assets_cmd(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for typo_sae.safetensors and typo_features.json (default <workdir>/typo).")] = None,
    model: opt.Model = DEFAULT_MODEL,
    weights: opt.Weights = None,
    layers: Annotated[str, typer.Option("--layers", help="Blocks to train SAEs on, or 'all'.")] = "2,4,6,8",
    n_discovery: NDiscoveryOpt = 512,
    n_val: NValOpt = 600,
    n_test: NTestOpt = 600,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """Train SAEs on the toy CLIP, choose layer and features on validation, write the shipped SAE and feature
    file."""
    from sae_vit.analysis.typo import AssetConfig, EvalConfig
    from sae_vit.pipeline import make_typo_assets

    check_inputs(weights=weights)
    _torch_device("cpu")
    bundle = _bundle(model, weights, None, "cpu")
    n_layers = bundle.backbone.n_layers
    wanted = parse_layers(layers)
    wanted = list(range(n_layers)) if wanted == "all" else wanted
    if not wanted or max(wanted) >= n_layers:
        raise SaeVitError(f"--layers {layers!r} is out of range; {bundle.description} has blocks "
                          f"0..{n_layers - 1}.")
    cfg = AssetConfig(layers=tuple(wanted), seed=seed)
    eval_cfg = EvalConfig(n_discovery=n_discovery, n_val=n_val, n_test=n_test, seed=seed)
    out = Path(out) if out is not None else workdir() / "typo"
    report, sae_path, feat_path = make_typo_assets(bundle, out, workdir() / "typo_work", cfg, eval_cfg,
                                                   overwrite, progress=lambda m: note(m, "cyan"))
    print_report(report)
    result(features_file=feat_path)
    say(f"model: {bundle.description}; layer {report.layer}, N={report.n}; wrote {sae_path} and {feat_path}")


def _feature_file(sae_path) -> Path:
    """Where eval world writes an SAE's feature file: beside it, or in <workdir>/typo for the shipped one."""
    from sae_vit.analysis.typo import asset_dir, features_path_for

    path = features_path_for(sae_path)
    shipped = Path(sae_path).resolve().parent == asset_dir().resolve()
    return workdir() / "typo" / path.name if shipped else path


def _eval_world(paths, out, model, weights, text_embeddings, cfg, device) -> None:
    from sae_vit.analysis.typo import default_pair, run_world_eval, write_report_features
    from sae_vit.core.sae import SAE

    paths = paths or [default_pair()[0]]
    saes = [(p, SAE.load(p, device)) for p in paths]
    bundle = _bundle(model, weights, text_embeddings, device, saes[0][1].cfg.model)
    # The feature file is a derived output like every eval result: the protocol is seeded, so a re-run with the same
    # SAE, model and options writes the same file again (the README's re-run rule); it is regenerated, never refused.
    targets = {str(p): Path(out) if out is not None else _feature_file(p) for p in paths}
    start = time.perf_counter()
    report = run_world_eval(bundle, saes, cfg, progress=lambda m: note(m, "cyan"))
    chosen = {str(p): s for p, s in saes}[report.sae_path]
    path = write_report_features(report, chosen, targets[report.sae_path], cfg, overwrite=True)
    print_report(report)
    result(features_file=path)
    say(f"model: {bundle.description}; chosen layer {report.layer}, N={report.n} on the validation split; "
        f"features -> {path} ({time.perf_counter() - start:.0f} s)")


def _gain(x: float) -> str:
    return "—" if x != x else f"{100 * x:+.1f}"


def print_report(report) -> None:
    """The validation sweep and the test tables of a :class:`~sae_vit.analysis.typo.TypoReport`; gains are in
    points against no defence on the same images, the reading-specific gain = attack gain − control gain."""
    sweep, chosen = report.sweep, (report.layer, report.n)
    result(layer=report.layer, n=report.n, sae_file=report.sae_path, sweep=sweep, settings=report.settings,
           results={name: {d: m.as_dict() for d, m in metrics.items()} for name, metrics in report.results.items()})
    print_table("Validation sweep (discovery recipe): layer x N suppressed features, chosen by reading-specific gain",
                ("layer", "N", "clean", "attacked", "control", "ASR", "reading gain"),
                [(r["layer"], r["n"], _pct(r["clean"]), _pct(r["attacked"]), _pct(r["control"]), _pct(r["asr"]),
                  _gain(r["reading_gain"])) for r in sweep],
                styles=["bold green" if (r["layer"], r["n"]) == chosen else None for r in sweep])
    cols = ("defence", "clean", "attacked", "control", "ASR", "attack gain", "control gain", "reading gain", "setting")
    for name, metrics in report.results.items():
        rows = [(d, _pct(m.clean), _pct(m.attacked), _pct(m.control), _pct(m.asr), _gain(m.attack_gain),
                 _gain(m.control_gain), _gain(m.reading_gain), report.settings[d]) for d, m in metrics.items()]
        title = f"{name}: zero-shot accuracy %, attack success rate %, gains in points"
        print_table(title, cols, rows, left=("defence", "setting"))


def _eval_folder(directory, sae, features, n, model, weights, text_embeddings, device) -> None:
    from sae_vit.analysis.typo import defence_from_files, folder_eval, resolve_features

    sae_path, feat_path = resolve_features(sae, features)
    defence, _ = defence_from_files(sae_path, feat_path, n, device)
    bundle = _bundle(model, weights, text_embeddings, device, defence.sae.cfg.model)
    res = folder_eval(bundle, directory, defence)
    result(folder=directory, sae_file=sae_path, defence=defence.describe(), **res)
    controls = res["none"]["n_control"] > 0
    cols = ("defence", "clean", "attacked", *(("control", "reading gain") if controls else ()), "ASR")
    print_table(f"{directory}: {len(res['classes'])} classes (labels and written words)", cols, left=("defence",),
                rows=[(label, _pct(res[d]["clean"]), _pct(res[d]["attacked"]),
                       *((_pct(res[d]["control"]), _gain(res[d].get("reading_gain", 0.0))) if controls else ()),
                       _pct(res[d]["asr"])) for d, label in (("none", "no defence"), ("sae", defence.describe()))])
    say(f"model: {bundle.description}; SAE: {sae_path}; {res['none']['n_attacked']} attacked, "
        f"{res['none']['n_clean']} clean, {res['none']['n_control']} control images"
        + ("" if controls else " (no unrelated-word controls: no reading-specific gain; write them with "
                               "`defend-typo attack --control`)"))
