"""The embedded default: the commands users asked for run verbatim, offline, on the shipped toy CLIP."""

from typer.testing import CliRunner

import sae_vit.pipeline as api
from sae_vit.cli import app
from sae_vit.core import train as train_mod


def test_cache_then_train_verbatim(monkeypatch, tmp_path):
    # a reduced default size; the commands themselves are typed exactly as the README gives them
    monkeypatch.setattr(api, "DEFAULT_WORLD_IMAGES", 120)
    monkeypatch.setattr(train_mod, "MIN_DEFAULT_TOKENS", 20_000)
    runner = CliRunner()
    r = runner.invoke(app, ["cache"])
    assert r.exit_code == 0, r.output
    assert "toy CLIP" in r.output and "cached 120 images" in r.output
    r = runner.invoke(app, ["train", "--layer", "8", "--tokens", "cls"])
    assert r.exit_code == 0, r.output
    home = tmp_path / "saevit_home"
    assert (home / "saes" / "layer_8" / "cls" / "sae.safetensors").is_file()
    r = runner.invoke(app, ["sparsity"])
    assert r.exit_code == 0, r.output
    assert (home / "sparsity.csv").is_file()


def test_demo_reduced(tmp_path):
    from sae_vit.pipeline.demo import DemoConfig, run_demo

    cfg = DemoConfig(n_images=80, layers=(2, 8), tokens=("cls", "all"), n_tokens=20_000, steer_features=8,
                     steer_images=4, suppress_images=0, typo_images=0, inspect_features=0)  # tests/test_demo.py
    result = run_demo(tmp_path / "demo", cfg)
    rows = result.sparsity.rows
    topk, relu = rows[rows["architecture"] == "topk"], rows[rows["architecture"] == "relu"]
    assert list(topk["layer"]) == [2, 2, 8, 8] and (rows["evaluated_on"] == "cache").all()
    assert rows["fvu"].notna().all() and (topk["l0"] <= 16 + 1e-6).all()  # a few steps only: no quality bar
    assert sorted(relu["layer"]) == [2, 8] and set(relu["tokens"]) == {"cls"}  # the paper's ReLU+L1 SAEs too
    assert len(result.steer) == 2
    kinds = result.steer[0].summary["kinds"]
    assert kinds["feature"]["scored"] == 8 and kinds["neuron"]["scored"] == result.manifest["d_model"]
    assert (tmp_path / "demo" / "steer" / "steer_summary.csv").is_file()
