"""Every option is checked before a command refuses to replace an earlier output.

Each test leaves an earlier output in place and gives one bad option: the one-line error must name that option,
not "already exists; pass --overwrite" (which would send the user to the wrong fix).
"""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from sae_vit.cli import app
from sae_vit.core.sae import SAE, SAEConfig

runner = CliRunner()


def refuses(args, fragment):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output, result.output
    assert "--overwrite" not in result.output, result.output
    assert "Traceback" not in result.output


def toy_sae(path, layer=2):
    """A random TopK SAE on the toy CLIP (width 64)."""
    torch.manual_seed(layer)
    return SAE(SAEConfig(d_in=64, d_sae=32, k=4, model="toy", layer=layer, tokens="all")).save(path)


def test_sparsity_checks_cache_and_saes_before_the_csv(tmp_path):
    sae = toy_sae(tmp_path / "sae.safetensors")
    csv = tmp_path / "sparsity.csv"
    csv.write_text("earlier table\n")
    refuses(["sparsity", sae, "--cache", tmp_path / "nope", "--out", csv], "not an activation cache")
    refuses(["sparsity", tmp_path / "missing.safetensors", "--out", csv], "does not exist")
    refuses(["sparsity", sae, "--architecture", "gated", "--out", csv], "architecture")
    assert csv.read_text() == "earlier table\n"


def test_cache_and_train_check_options_before_their_outputs(tmp_path):
    cache = tmp_path / "cache"
    args = ["cache", "--model", "toy", "--max-images", "40", "--layers", "2", "--batch-size", "40", "--out", cache]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    refuses([*args, "--site", "resid_pre"], "--site")
    refuses([*args, "--world", "forest"], "forest")
    refuses([*args, "--weights", tmp_path / "missing.safetensors"], "--weights")
    existing = toy_sae(tmp_path / "sae.safetensors")
    train = ["train", "--cache", cache, "--layer", "2", "--out", existing]
    refuses([*train, "--architecture", "gated"], "architecture")
    refuses([*train, "--lr", "fast"], "--lr")
    refuses([*train, "--epochs", "0"], "--epochs")
    refuses([*train, "--normalization", "batch"], "normalization")


def test_steer_score_checks_inputs_before_its_results(tmp_path):
    out = tmp_path / "steer"
    out.mkdir()
    (out / "steer_summary.csv").write_text("earlier\n")
    sae = toy_sae(tmp_path / "sae.safetensors")
    refuses(["steer-score", "--sae", tmp_path / "missing.safetensors", "--out", out], "does not exist")
    refuses(["steer-score", "--sae", sae, "--vocab", tmp_path / "words.txt", "--out", out], "--vocab")
    refuses(["steer-score", "--sae", sae, "--images", tmp_path / "photos", "--out", out], "--images")
    refuses(["steer-score", "--sae", sae, "--world", "forest", "--out", out], "--world")


def test_inspect_checks_inputs_before_its_results(tmp_path):
    out = tmp_path / "inspect"
    out.mkdir()
    (out / "index.html").write_text("earlier")
    sae = toy_sae(tmp_path / "sae.safetensors")
    refuses(["inspect", "--sae", sae, "--images", tmp_path / "photos", "--out", out], "--images")
    refuses(["inspect", "--sae", sae, "--text-embeddings", tmp_path / "t.safetensors", "--out", out],
            "--text-embeddings")


def test_suppress_checks_inputs_before_its_results(tmp_path):
    out = tmp_path / "suppress"
    out.mkdir()
    (out / "suppress_table.csv").write_text("earlier\n")
    sae = toy_sae(tmp_path / "sae.safetensors")
    data = tmp_path / "data"
    data.mkdir()
    refuses(["suppress", "--data", tmp_path / "missing", "--task", "waterbirds", "--sae", sae, "--out", out], "--data")
    refuses(["suppress", "--data", data, "--task", "birds", "--sae", sae, "--out", out], "--task")
    refuses(["suppress", "--data", data, "--task", "waterbirds", "--sae", tmp_path / "no.safetensors", "--out", out],
            "does not exist")


def test_defend_typo_checks_inputs_before_its_outputs(tmp_path):
    sae = toy_sae(tmp_path / "sae.safetensors")
    (tmp_path / "sae.typo.json").write_text("{}")  # the feature file eval world would write
    missing = tmp_path / "missing.safetensors"
    refuses(["defend-typo", "--eval", "world", "--sae", sae, "--weights", missing], "--weights")
    refuses(["defend-typo", "eval", "world", "--sae", sae, "--text-embeddings", missing], "--text-embeddings")
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "typo_sae.safetensors").write_text("earlier")
    refuses(["defend-typo", "--make-assets", "--out", assets, "--layers", "20"], "out of range")
    refuses(["defend-typo", "make-assets", "--out", assets, "--weights", missing], "--weights")


def test_demo_checks_layers_before_its_folder(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "sparsity.csv").write_text("earlier\n")
    refuses(["demo", "--out", out, "--layers", "20"], "out of range")
