"""``--json``: every command that prints a result prints exactly one JSON document on stdout (notes and
progress on stderr); fixed option choices are enums, rejected at parse time."""

import json

import pytest
from typer.testing import CliRunner

import sae_vit.cli._options as opt
from sae_vit.cli import app

runner = CliRunner()
SMALL_TRAIN = ["--n-tokens", "2000", "--expansion", "2", "--k", "4", "--batch-size", "256"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A toy working folder: a small cache of block 8 and one CLS SAE on it."""
    root = tmp_path_factory.mktemp("json")
    cache, sae = root / "cache", root / "saes" / "layer_8" / "cls" / "sae.safetensors"
    r = runner.invoke(app, ["cache", "--max-images", "40", "--layers", "8", "--out", str(cache)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--cache", str(cache), "--layer", "8", "--tokens", "cls", "--out", str(sae),
                            *SMALL_TRAIN])
    assert r.exit_code == 0, r.output
    return root


COMMANDS = {
    "cache": lambda w: ["cache", "--max-images", "20", "--layers", "8", "--out", w / "cache2"],
    "train": lambda w: ["train", "--cache", w / "cache", "--layer", "8", "--tokens", "cls", "--out",
                        w / "t" / "sae.safetensors", *SMALL_TRAIN],
    "sparsity": lambda w: ["sparsity", w / "saes", "--cache", w / "cache", "--out", w / "sparsity.csv"],
    "steer-score": lambda w: ["steer-score", "--sae", w / "saes", "--n-images", "4", "--max-features", "4",
                              "--random-control", "4", "--out", w / "steer"],
    "inspect": lambda w: ["inspect", "--sae", w / "saes" / "layer_8" / "cls" / "sae.safetensors", "--features",
                          "1", "--out", w / "inspect"],
    "list --released": lambda w: ["list", "--released"],
    "export": lambda w: ["export", w / "saes" / "layer_8" / "cls" / "sae.safetensors", "--to", w / "saelens"],
    "world export": lambda w: ["world", "export", "--task", "shapes", "--n", "2", "--out", w / "world"],
    "world show": lambda w: ["world", "show", "--n", "4", "--out", w / "grid.png"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_json_is_one_document_on_stdout(work, name, monkeypatch):
    monkeypatch.chdir(work)
    args = [str(a) for a in COMMANDS[name](work)] + ["--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # exactly one document: json.loads refuses anything after it
    assert isinstance(doc, dict) and "messages" in doc
    assert "\x1b" not in r.stdout and "┃" not in r.stdout


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
