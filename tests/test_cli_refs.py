"""Every command that takes an SAE takes any SAE reference: ``hf://owner/repo/path`` (offline, through a Hugging
Face cache laid out on disk), a SAELens folder and an EleutherAI sparsify folder, and runs to the end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from sae_vit.analysis import typo
from sae_vit.cli import app
from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.core.text import TextHead
from tests.conftest import HUB_COMMIT as COMMIT
from tests.conftest import lay_out_hub_cache
from tests.test_interop import SAELENS_V6_TOPK, write_saelens
from tests.test_suppress import write_waterbirds

WORDS = ["landbird", "waterbird", "cat", "dog", "bird", "tree"]
REF = "hf://owner/vit-saes/layer_3/all"
runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def hub(tmp_path, offline_hub):
    """An offline Hub cache holding owner/vit-saes: layer_3/all/{sae.safetensors, typo_features.json} for the tiny
    ViT; returns the local SAE the repo was made from."""
    torch.manual_seed(3)
    sae = SAE(SAEConfig(d_in=64, d_sae=48, k=6, model="test_vit", layer=3, tokens="all"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    local = sae.save(tmp_path / "local" / "sae.safetensors")
    feats = typo.save_features(local.with_name("typo_features.json"), local, sae,
                               [{"index": i, "score": 1.0} for i in range(8)], 4, {"split": "train"})
    lay_out_hub_cache(offline_hub, "owner/vit-saes", {
        "layer_3/all/sae.safetensors": local.read_bytes(), "layer_3/all/typo_features.json": feats.read_bytes()})
    return local


@pytest.fixture
def model_args(tiny_vit, tiny_backbone, tmp_path):
    """--model/--weights of the tiny ViT and a text-embeddings file naming WORDS."""
    emb = TextHead.save_embeddings(tmp_path / "words.safetensors", WORDS,
                                   torch.randn(len(WORDS), tiny_backbone.model.num_classes,
                                               generator=torch.Generator().manual_seed(0)))
    return ["--model", tiny_vit[0], "--weights", tiny_vit[1], "--text-embeddings", emb]


def test_hf_ref_in_sparsity_convert_and_export(hub, tmp_path):
    run("sparsity", REF, "--out", tmp_path / "s.csv", "--no-plot")
    rows = pd.read_csv(tmp_path / "s.csv")
    assert list(rows["layer"]) == [3]
    assert rows["path"][0] == str(tmp_path / f"hf_cache/models--owner--vit-saes/snapshots/{COMMIT}/layer_3/all/"
                                             "sae.safetensors")
    run("convert", REF, "--to", tmp_path / "conv.safetensors", "--tokens", "cls")
    converted, original = SAE.load(tmp_path / "conv.safetensors"), SAE.load(hub)
    assert converted.cfg.tokens == "cls" and torch.equal(converted.W_dec, original.W_dec)
    run("export", REF, "--to", tmp_path / "saelens")
    assert (tmp_path / "saelens" / "cfg.json").is_file()


def test_hf_ref_in_inspect_and_steer_score(hub, model_args, image_dir, tmp_path):
    run("inspect", "--sae", REF, *model_args, "--images", image_dir, "--features", "1,2", "--top-images", "2",
        "--out", tmp_path / "inspect")
    assert (tmp_path / "inspect" / "index.html").is_file()
    run("steer-score", "--sae", REF, *model_args, "--images", image_dir, "--n-images", "2", "--features", "0,1",
        "--alphas", "0,5", "--no-neurons", "--random-control", "1", "--out", tmp_path / "steer")
    units = pd.read_csv(tmp_path / "steer" / "steer_layer3_resid_post_all.csv")
    assert set(units["kind"]) == {"feature", "random", "null_noise", "null_erase", "null_erase_full"}
    assert set(units["target"]) <= set(WORDS)


def test_hf_ref_in_suppress(hub, model_args, tmp_path):
    data = write_waterbirds(tmp_path / "wb")
    out = run("suppress", "--data", data, "--task", "waterbirds", "--sae", REF, *model_args, "--n-features", "1",
              "--n-random", "1", "--no-probe", "--out", tmp_path / "suppress")
    assert "chosen layer 3" in out
    assert (tmp_path / "suppress" / "suppress_table.csv").is_file()


def test_hf_ref_in_defend_typo(hub, model_args, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(image)
    # The feature file is found beside the SAE in the Hub snapshot; its hash names the same SAE file.
    out = run("defend-typo", image, "--classes", "cat,dog,bird", "--sae", REF, *model_args)
    assert "defended" in out and "suppressing 4 text features" in out
    out = run("defend-typo", "classify", image, "--classes", "cat,dog", "--sae", REF, *model_args, "--n-features", "2")
    assert "suppressing 2 text features" in out


def foreign_folders(tmp_path):
    """The same kind of SAE for the tiny ViT saved by SAELens (6.x layout) and by sparsify."""
    g = torch.Generator().manual_seed(9)
    saelens = write_saelens(tmp_path / "blocks.3.hook_resid_post", {
        **SAELENS_V6_TOPK, "d_in": 64, "d_sae": 48, "k": 6,
        "metadata": {**SAELENS_V6_TOPK["metadata"], "hook_name": "blocks.3.hook_resid_post", "model_name": "test_vit"},
    }, {"W_enc": torch.randn(64, 48, generator=g) / 8, "b_enc": torch.randn(48, generator=g) * 0.1,
        "W_dec": torch.randn(48, 64, generator=g) / 7, "b_dec": torch.randn(64, generator=g) * 0.1})
    sparsify = tmp_path / "layers.1"
    sparsify.mkdir()
    (sparsify / "cfg.json").write_text(json.dumps({"expansion_factor": 1, "normalize_decoder": True, "num_latents": 48,
                                                   "k": 6, "multi_topk": False, "skip_connection": False,
                                                   "transcode": False, "activation": "topk", "d_in": 64}))
    save_file({"encoder.weight": torch.randn(48, 64, generator=g) / 8, "encoder.bias": torch.randn(48, generator=g),
               "W_dec": torch.randn(48, 64, generator=g) / 7, "b_dec": torch.randn(64, generator=g)},
              str(sparsify / "sae.safetensors"))
    return saelens, sparsify


def test_saelens_and_sparsify_folders_in_sparsity_and_steer_score(model_args, image_dir, tmp_path):
    saelens, sparsify = foreign_folders(tmp_path)
    run("sparsity", saelens, sparsify, "--out", tmp_path / "s.csv", "--no-plot")
    rows = pd.read_csv(tmp_path / "s.csv")
    assert list(zip(rows["layer"], rows["tokens"], strict=True)) == [(1, "all"), (3, "cls")]
    run("steer-score", "--sae", saelens, "--sae", sparsify, *model_args, "--images", image_dir, "--n-images", "2",
        "--features", "0,1", "--alphas", "0,5", "--no-neurons", "--random-control", "1", "--out", tmp_path / "steer")
    summary = pd.read_csv(tmp_path / "steer" / "steer_summary.csv")
    assert sorted(set(summary["layer"])) == [1, 3]
