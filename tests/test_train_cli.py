"""``saevit train``'s training options: --d-sae, and the 'auto' defaults recorded in the checkpoint."""

import math

import pytest

from sae_vit.core.sae import SAE
from sae_vit.core.train import LR_AT_16K
from tests.test_cli import cli_cache, run  # noqa: F401  (cli_cache is a fixture)


def test_train_d_sae_and_auto_defaults(cli_cache, tmp_path):  # noqa: F811
    out = tmp_path / "sae.safetensors"
    code, text = run("train", "--cache", cli_cache, "--layer", "1", "--tokens", "cls", "--out", out, "--d-sae", "96",
                     "--k", "4", "--n-tokens", "2000")
    assert code == 0, text
    assert "held-out tokens: 1, fewer than 390: " in text  # the held-out image's CLS token
    sae = SAE.load(out)
    recipe = sae.cfg.training["recipe"]
    assert sae.cfg.d_sae == 96 and recipe["d_sae"] == 96
    d_in, batch = sae.cfg.d_in, recipe["batch_size"]
    assert recipe["lr"] == pytest.approx(LR_AT_16K * math.sqrt(2**14 / 96 * 768 / d_in * batch / 4096))
    assert recipe["schedule"] == "wsd" and recipe["warmup_steps"] == round(0.05 * math.ceil(2000 / batch))
    code, text = run("train", "--cache", cli_cache, "--layer", "1", "--tokens", "cls", "--out", tmp_path / "x",
                     "--d-sae", "2", "--k", "4")
    assert code == 2 and "--d-sae" in text, text
