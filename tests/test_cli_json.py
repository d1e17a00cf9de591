"""``--json``: every command that prints a result prints exactly one JSON document on stdout (notes and
progress on stderr); fixed option choices are enums, rejected at parse time."""

import csv
import functools
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sae_vit.cli._options as opt
from sae_vit.analysis import typo
from sae_vit.cli import app
from tests.conftest import lay_out_hub_cache

runner = CliRunner()
SMALL_TRAIN = ["--n-tokens", "2000", "--expansion", "2", "--k", "4", "--batch-size", "256"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A toy working folder: a small cache of block 8 and one CLS SAE on it (also in SAELens's layout, for convert),
    a Waterbirds-layout task (suppress), and a typographic folder: world shapes in one sub-folder per class, attacked
    with --control (defend-typo classify / eval DIR)."""
    from sae_vit.world.scenes import SHAPES

    root = tmp_path_factory.mktemp("json")
    cache, sae = root / "cache", root / "saes" / "layer_8" / "cls" / "sae.safetensors"
    shapes = root / "shapes"
    for args in (["cache", "--max-images", "40", "--layers", "8", "--out", cache],
                 ["train", "--cache", cache, "--layer", "8", "--tokens", "cls", "--out", sae, *SMALL_TRAIN],
                 ["export", sae, "--to", root / "saelens"],
                 ["world", "export", "--task", "waterbirds", "--n", "8", "--out", root / "waterbirds"],
                 ["world", "export", "--task", "shapes", "--n", "2", "--out", shapes]):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
    for row in csv.DictReader((shapes / "metadata.csv").open()):
        photo = root / "photos" / row["class_name"] / Path(row["path"]).name
        photo.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shapes / row["path"], photo)
    r = runner.invoke(app, ["defend-typo", "attack", str(root / "photos"), "--classes", ",".join(SHAPES), "--control",
                            "--out", str(root / "attacked")])
    assert r.exit_code == 0, r.output
    return root


SAE_FILE = Path("saes", "layer_8", "cls", "sae.safetensors")
WORLD_EVAL = ["--n-discovery", "8", "--n-val", "8", "--n-test", "8"]

#: Every command that takes --json, with small arguments; `tables` marks those that print a result table.
COMMANDS = {
    "cache": lambda w: ["cache", "--max-images", "20", "--layers", "8", "--out", w / "cache2"],
    "train": lambda w: ["train", "--cache", w / "cache", "--layer", "8", "--tokens", "cls", "--out",
                        w / "t" / "sae.safetensors", *SMALL_TRAIN],
    "sparsity": lambda w: ["sparsity", w / "saes", "--cache", w / "cache", "--out", w / "sparsity.csv"],
    "steer-score": lambda w: ["steer-score", "--sae", w / "saes", "--n-images", "4", "--max-features", "4",
                              "--random-control", "4", "--out", w / "steer"],
    "inspect": lambda w: ["inspect", "--sae", w / SAE_FILE, "--features", "1", "--n-images", "64", "--out",
                          w / "inspect"],
    "suppress": lambda w: ["suppress", "--data", w / "waterbirds", "--task", "waterbirds", "--sae", w / "saes",
                           "--pooled", "--n-features", "1,2", "--n-random", "1", "--out", w / "suppress"],
    "defend-typo classify": lambda w: ["defend-typo", next((w / "attacked").glob("*.png"))],
    "defend-typo attack": lambda w: ["defend-typo", "attack", w / "photos", "--word", "star", "--out",
                                     w / "attacked2"],
    "defend-typo eval:world": lambda w: ["defend-typo", "eval", "world", "--sae", w / SAE_FILE, *WORLD_EVAL,
                                         "--no-baselines", "--out", w / "typo.json"],
    "defend-typo eval:DIR": lambda w: ["defend-typo", "eval", w / "attacked"],
    "defend-typo make-assets": lambda w: ["defend-typo", "make-assets", "--layers", "8", *WORLD_EVAL, "--out",
                                          w / "assets"],
    "list:released": lambda w: ["list", "--released"],
    "list:repo": lambda w: ["list", "owner/saes"],
    "pull": lambda w: ["pull", "owner/saes", "--out", w / "pulled"],
    "pull:list": lambda w: ["pull", "owner/saes", "--list"],
    "push": lambda w: ["push", w / "saes", "me/saes"],
    "convert": lambda w: ["convert", w / "saelens", "--to", w / "converted.safetensors", "--layer", "8"],
    "export": lambda w: ["export", w / SAE_FILE, "--to", w / "saelens2"],
    "world export": lambda w: ["world", "export", "--task", "shapes", "--n", "2", "--out", w / "world"],
    "world show": lambda w: ["world", "show", "--n", "4", "--out", w / "grid.png"],
    "world train-clip": lambda w: ["world", "train-clip", "--steps", "1", "--batch-size", "8", "--eval-n", "8",
                                   "--out", w / "clip.safetensors"],
    "demo": lambda w: ["demo", "--n-images", "40", "--layers", "8", "--n-tokens", "2000", "--out", w / "demo"],
}
TABLES = {"sparsity", "steer-score", "suppress", "defend-typo classify", "defend-typo eval:world",
          "defend-typo eval:DIR", "defend-typo make-assets", "list:released", "list:repo", "pull:list",
          "world train-clip", "demo"}
SLOW = {"demo"}  # the whole pipeline, steer-score included


def _not_a_number(name):
    raise AssertionError(f"{name} in --json output: strict JSON has no NaN or infinity")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in COMMANDS])
def test_json_is_one_document_on_stdout(work, name, offline_hub, fake_hub, monkeypatch):
    monkeypatch.chdir(work)
    monkeypatch.setattr(typo, "AssetConfig", functools.partial(typo.AssetConfig, n_images=40, n_tokens=2000))
    lay_out_hub_cache(offline_hub, "owner/saes", {str(SAE_FILE.relative_to("saes")): (work / SAE_FILE).read_bytes()})
    args = [str(a) for a in COMMANDS[name](work)] + ["--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout, parse_constant=_not_a_number)  # exactly one document: json.loads refuses anything after it
    assert isinstance(doc, dict) and isinstance(doc["messages"], list)
    assert "\x1b" not in r.stdout and "┃" not in r.stdout
    if name in TABLES:
        assert doc["tables"] and all(t["rows"] and all(isinstance(row, dict) for row in t["rows"])
                                     for t in doc["tables"]), doc["tables"]
    # beside the tables, numbers come as numbers (a missing one as null)
    if name == "push":
        assert set(fake_hub["files"]) == {"README.md", "layer_8/cls/sae.safetensors"} and doc["files"] == sorted(
            fake_hub["files"])
    elif name == "defend-typo classify":
        image = doc["images"][0]
        probs = image["probabilities"]
        assert image["no defence"] == max(probs, key=lambda c: probs[c]["no defence"])
        assert all(0 <= p["no defence"] <= 1 and 0 <= p["defended"] <= 1 for p in probs.values())
    elif name == "suppress":
        none = next(row for row in doc["rows"] if row["method"] == "none")
        assert none["layer"] is None and 0 <= none["test_worst"] <= none["test_avg"] <= 1
    elif name == "defend-typo eval:world":
        assert doc["features_file"] == str(work / "typo.json") and {r["n"] for r in doc["sweep"]} >= {0, doc["n"]}


def test_command_list_is_complete():
    """Every command and sub-command that takes --json is in COMMANDS (a new one must be added there); a name's part
    after ':' tells apart two runs of one command."""
    import typer

    def walk(group, prefix: str):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):  # a sub-group (defend-typo, world)
                yield from walk(cmd, f"{prefix}{name} ")
            elif any("--json" in p.opts for p in cmd.params):
                yield f"{prefix}{name}"

    assert set(walk(typer.main.get_command(app), "")) == {name.split(":")[0] for name in COMMANDS}


def test_a_missing_rate_is_null(work, tmp_path):
    """eval DIR on a folder without clean images: clean accuracy is undefined, and null in the JSON (not NaN)."""
    r = runner.invoke(app, ["defend-typo", "attack", str(work / "photos"), "--word", "star", "--out",
                            str(tmp_path / "attacked")])  # no --control: no clean crops
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["defend-typo", "eval", str(tmp_path / "attacked"), "--json"])
    doc = json.loads(r.stdout, parse_constant=_not_a_number)
    assert doc["none"]["clean"] is None and doc["none"]["n_clean"] == 0 and 0 <= doc["sae"]["attacked"] <= 1


def test_list_released_json_rows():
    r = runner.invoke(app, ["list", "--released", "--json"])
    rows = json.loads(r.stdout)["tables"][0]["rows"]
    assert {"name": "clip-b32/resid_post/layer_8"}.items() <= next(
        row for row in rows if row["name"] == "clip-b32/resid_post/layer_8").items()
    assert {"Hub repo", "layer", "site", "expansion", "architecture", "L1 / k"} <= set(rows[0])


@pytest.mark.parametrize("args", [
    ["cache", "--tokens", "foo"], ["cache", "--site", "mlp"], ["train", "--layer", "8", "--architecture", "gated"],
    ["steer-score", "--tokens", "some"], ["world", "export", "--task", "dogs", "--out", "x"],
    ["export", "x", "--to", "y", "--format", "onnx"],
])
def test_bad_choice_is_a_parse_error(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "Invalid value" in r.output, r.output


def test_choices_match_the_library():
    from sae_vit.analysis.suppress.data import TASKS as SUPPRESS_TASKS
    from sae_vit.analysis.typo.attacks import POSITIONS
    from sae_vit.core.backbone import SITES, TOKENS
    from sae_vit.core.sae import ARCHITECTURES, NORMALIZATIONS
    from sae_vit.core.train import B_DEC_INITS
    from sae_vit.core.train import DTYPES as PRECISIONS
    from sae_vit.io.cache import DTYPES
    from sae_vit.io.interop import EXPORT_FORMATS, FORMATS
    from sae_vit.world.scenes import TASKS

    pairs = [(opt.Site, SITES), (opt.Tokens, TOKENS), (opt.Arch, ARCHITECTURES), (opt.Normalization, NORMALIZATIONS),
             (opt.BDecInit, B_DEC_INITS), (opt.Precision, PRECISIONS), (opt.CacheDtype, DTYPES),
             (opt.WorldTask, TASKS), (opt.SuppressTask, SUPPRESS_TASKS), (opt.Position, POSITIONS),
             (opt.ExportFormat, EXPORT_FORMATS), (opt.ConvertFrom, ("auto", *FORMATS))]
    for enum, values in pairs:
        assert {e.value for e in enum} == set(values), enum


def test_sparsity_json_rows(work):
    r = runner.invoke(app, ["sparsity", str(work / "saes"), "--cache", str(work / "cache"), "--out",
                            str(work / "s2.csv"), "--json"])
    doc = json.loads(r.stdout)
    assert doc["rows"][0]["layer"] == 8 and doc["rows"][0]["tokens"] == "cls" and doc["csv"].endswith("s2.csv")


#: Commands whose outputs are all derived (regenerated on every run), and the output each writes under `w`.
DERIVED = {"sparsity": "sparsity.csv", "steer-score": "steer", "inspect": "inspect", "suppress": "suppress",
           "defend-typo eval:world": "typo.json"}


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_reruns_leave_user_files_next_to_and_inside_outputs_alone(work, tmp_path, name, monkeypatch):
    """Issue 15: a command that regenerates its outputs on a re-run never touches a user's file beside or inside them
    (byte-identical after two runs, --overwrite passed on the second where the command accepts it)."""
    monkeypatch.chdir(work)
    w = tmp_path / "w"
    for link in ("cache", "saes", "waterbirds", "attacked"):
        (w / link).parent.mkdir(parents=True, exist_ok=True)
        (w / link).symlink_to(work / link)
    out = w / DERIVED[name]
    user = {w / "notes.txt": b"beside", w / f"{out.name}.bak": b"a copy of mine"}
    if out.suffix == "":  # a folder of outputs: files inside it, at the top and below
        user.update({out / "thesis.tex": b"\\section{x}", out / "sub" / "data.csv": b"a,b\n1,2\n"})
    for path, data in user.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    args = [str(a) for a in COMMANDS[name](w)]
    for extra in ([], ["--overwrite"]):
        r = runner.invoke(app, args + extra)
        assert r.exit_code == 0, r.output
    assert out.exists()
    assert {p: p.read_bytes() for p in user} == user
