"""The re-run rule: derived outputs (tables, plots, pages) are regenerated on a re-run; a trained SAE (like a cache
or any other expensive output) is never replaced without --overwrite: the same recipe on the same cache keeps it,
other settings are refused."""

import pytest
import typer
from typer.testing import CliRunner

import sae_vit.pipeline as api
from sae_vit.cli import app
from sae_vit.core import train as train_mod

QUICKSTART = [["cache"], ["train", "--layer", "8", "--tokens", "cls"], ["sparsity"],
              ["steer-score", "--n-images", "4", "--max-features", "4", "--random-control", "4"]]


def test_readme_quickstart_runs_twice(monkeypatch, tmp_path):
    monkeypatch.setattr(api, "DEFAULT_WORLD_IMAGES", 60)
    monkeypatch.setattr(train_mod, "MIN_DEFAULT_TOKENS", 5_000)
    runner = CliRunner()
    home = tmp_path / "saevit_home"
    sae = home / "saes" / "layer_8" / "cls" / "sae.safetensors"
    for attempt in range(2):
        for args in QUICKSTART:
            if attempt == 1 and args[0] == "train":
                before = sae.read_bytes()
                r = runner.invoke(app, args)
                assert r.exit_code == 0 and "kept it" in r.output, r.output
                assert sae.read_bytes() == before
                r = runner.invoke(app, [*args, "--k", "4"])  # other settings: refused, the SAE untouched
                lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("using default")]
                assert r.exit_code == 2 and len(lines) == 1 and "--overwrite" in lines[0], r.output
                assert sae.read_bytes() == before
                continue
            r = runner.invoke(app, args)
            assert r.exit_code == 0, (attempt, args, r.output)
    assert (home / "sparsity.csv").is_file() and (home / "steer" / "steer_summary.csv").is_file()


def test_defend_typo_eval_world_regenerates_its_feature_file(tmp_path):
    """The feature file eval world writes is a derived output: the protocol is seeded, so a re-run writes the same file
    again rather than stopping at "already exists"."""
    runner = CliRunner()
    args = ["defend-typo", "eval", "world", "--n-discovery", "8", "--n-val", "8", "--n-test", "8", "--no-baselines"]
    feature_file = tmp_path / "saevit_home" / "typo" / "typo_sae.typo.json"  # the shipped SAE's, in the work folder
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    first = feature_file.read_bytes()
    feature_file.write_text("stale")
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert feature_file.read_bytes() == first


@pytest.mark.parametrize("command", [["sparsity"], ["steer-score"], ["inspect"], ["suppress"], ["defend-typo", "eval"]])
def test_overwrite_is_hidden_where_every_output_is_derived(command):
    """Nothing of these commands needs --overwrite, so --help does not offer it; old scripts that pass it still run."""
    r = CliRunner().invoke(app, [*command, "--help"])
    assert r.exit_code == 0 and "--overwrite" not in r.output
    cmd = typer.main.get_command(app)
    for word in command:
        cmd = cmd.commands[word]
    assert next(p for p in cmd.params if "--overwrite" in p.opts).hidden


@pytest.mark.parametrize("command", [["cache"], ["train"], ["pull"], ["convert"], ["export"], ["world", "export"],
                                     ["defend-typo", "attack"], ["defend-typo", "make-assets"]])
def test_overwrite_is_offered_where_an_output_is_expensive(command):
    r = CliRunner().invoke(app, [*command, "--help"])
    assert r.exit_code == 0 and "--overwrite" in r.output
