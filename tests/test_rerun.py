"""The re-run rule: derived outputs (tables, plots, pages) are regenerated on a re-run; a trained SAE (like a cache
or any other expensive output) is never replaced without --overwrite."""

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
                lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("using default")]
                assert r.exit_code == 2 and len(lines) == 1 and "--overwrite" in lines[0], r.output
                assert sae.read_bytes() == before
                continue
            r = runner.invoke(app, args)
            assert r.exit_code == 0, (attempt, args, r.output)
    assert (home / "sparsity.csv").is_file() and (home / "steer" / "steer_summary.csv").is_file()
