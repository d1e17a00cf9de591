"""Steerability: the batched implementation against the naive splice loop, baselines, and bad input."""

import pytest
import torch
import torch.nn.functional as F

from sae_vit.analysis.steer import (
    SteerConfig,
    build_context,
    naive_steer,
    neuron_family,
    sae_family,
    steer_batched,
    steer_score,
)
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE, SAEConfig


def _setup(backbone, normalization="none", tokens="all", site="resid_post", seed=0):
    torch.manual_seed(seed)
    d = backbone.d_site(site)
    sae = SAE(SAEConfig(d_in=d, d_sae=32, k=4, normalization=normalization, model=backbone.name, layer=3,
                        site=site, tokens=tokens))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.W_enc.mul_(4.0)
    size = backbone.model.patch_embed.img_size
    images = torch.randn(3, 3, *size)
    text = F.normalize(torch.randn(7, backbone.model.num_classes), dim=-1)
    return sae, images, text


@pytest.mark.parametrize("normalization,tokens,site", [("none", "all", "resid_post"), ("layer_norm", "cls", "resid_post"),
                                                       ("layer_norm", "patches", "mlp_out")])
def test_batched_equals_naive_loop(tiny_backbone, normalization, tokens, site):
    sae, images, text = _setup(tiny_backbone, normalization, tokens, site)
    ctx = build_context(tiny_backbone, 3, site, images, text, tokens, temperature=30.0)
    fam, _ = sae_family(sae, ctx)
    features = torch.tensor([0, 5, 17])
    strengths = [-3.0, 0.0, 4.0, 25.0]
    fast = steer_batched(ctx, fam.directions(features), fam.current(features), fam.scale, strengths, max_batch=5)
    for fi, feat in enumerate(features.tolist()):
        for si, s in enumerate(strengths):
            slow = naive_steer(tiny_backbone, sae, 3, images, text, feat, s, tokens=tokens, temperature=30.0)
            torch.testing.assert_close(fast[fi, si], slow, atol=1e-4, rtol=0)
    assert (fast[:, -1] ** 2).sum(-1).max() > 1e-4  # steering really moves the output


def test_neuron_baseline_sets_the_dimension(tiny_backbone):
    from sae_vit.core.backbone import splice

    _, images, text = _setup(tiny_backbone)
    ctx = build_context(tiny_backbone, 3, "resid_post", images, text, "all", temperature=30.0)
    fam = neuron_family(ctx)
    dp = steer_batched(ctx, fam.directions(torch.tensor([9])), fam.current(torch.tensor([9])), fam.scale, [5.0])

    def set9(x):
        x = x.clone()
        x[..., 9] = 5.0
        return x

    with torch.no_grad():
        p0 = torch.softmax(30 * F.normalize(tiny_backbone.image_embedding(images), dim=-1) @ text.T, -1)
        with splice(tiny_backbone, 3, set9):
            p1 = torch.softmax(30 * F.normalize(tiny_backbone.image_embedding(images), dim=-1) @ text.T, -1)
    torch.testing.assert_close(dp[0, 0], (p1 - p0).mean(0), atol=1e-4, rtol=0)


def test_steer_score_report_and_errors(tiny_backbone):
    sae, images, text = _setup(tiny_backbone)
    words = [f"w{i}" for i in range(7)]
    cfg = SteerConfig(alphas=(0, 5, 40), threshold=0.01, temperature=30.0, curve_top=2)
    report = steer_score(sae, tiny_backbone, images, words, text, cfg, max_features=10, random_control=6)
    units = report.units
    assert set(units["kind"]) == {"feature", "neuron", "random", "null_noise", "null_erase", "null_erase_full"}
    assert (units["kind"] == "feature").sum() == 10 and (units["kind"] == "neuron").sum() == 64
    assert units["target"].isin(words).all()
    assert units.loc[~units.kind.str.startswith("null"), "S_alpha_40"].notna().sum() == 6  # top 2 of each kind
    k = report.summary["kinds"]["feature"]
    assert 0 <= k["fraction"] <= 1 and k["scored"] == 10
    # strengths are relative on a non-CLIP model: alpha 40 is scaled by the activation norm
    assert report.strengths[-1] != 40.0

    other = SAE(SAEConfig(d_in=64, d_sae=8, k=2, model="toy", layer=3))
    with pytest.raises(SaeVitError, match="trained on model"):
        steer_score(other, tiny_backbone, images, words, text, cfg)
    wide = SAE(SAEConfig(d_in=32, d_sae=8, k=2, model=tiny_backbone.name, layer=3))
    with pytest.raises(SaeVitError, match="d_in=32"):
        steer_score(wide, tiny_backbone, images, words, text, cfg)
    with pytest.raises(SaeVitError, match="empty"):
        steer_score(sae, tiny_backbone, images[:0], words, text, cfg)


def test_real_clip_path_end_to_end(tmp_path, image_dir):
    """Mechanics of the documented real-CLIP path: ViT-B/32 architecture from a local file (random weights),
    a random SAE recorded for that model, and a text-embeddings file for the vocabulary."""
    import pandas as pd
    from typer.testing import CliRunner

    from sae_vit.cli import app
    from sae_vit.core.text import TextHead
    from tests.conftest import save_random_vit

    name = "vit_base_patch32_clip_224.datacompxl"
    weights = save_random_vit(name, tmp_path / "b32.safetensors")
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=768, d_sae=64, architecture="relu", k=None, l1_coefficient=1e-4,
                        normalization="layer_norm", model=name, layer=10, site="resid_post", tokens="all"))
    sae_path = sae.save(tmp_path / "sae.safetensors")
    words = ["dog", "cat", "car", "tree", "text"]
    emb = tmp_path / "vocab.safetensors"
    TextHead.save_embeddings(emb, words, F.normalize(torch.randn(5, 512), dim=-1))
    out = tmp_path / "steer"
    result = CliRunner().invoke(app, [
        "steer-score", "--sae", str(sae_path), "--model", name, "--weights", str(weights), "--text-embeddings",
        str(emb), "--images", str(image_dir), "--n-images", "2", "--features", "0,1,2", "--alphas", "0,150",
        "--no-neurons", "--random-control", "2", "--null-seeds", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "layer 10 (all) feature_vs_random: agreement difference" in result.output  # names its SAE's tokens
    units = pd.read_csv(out / "steer_layer10_resid_post_all.csv")
    scored = units[~units.kind.str.startswith("null")]
    assert len(scored) == 5 and set(units["target"]) <= set(words)
    assert (units.kind == "null_noise").sum() == 2 and {"null_erase", "null_erase_full"} <= set(units.kind)
    summary = pd.read_csv(out / "steer_summary.csv")
    assert set(summary["kind"]) == {"feature", "random", "null_noise", "null_erase", "null_erase_full"}
    assert {"alpha", "s", "s_token_norms", "strengths_token_norms"} <= set(summary.columns)
    assert "150.0" in summary.loc[summary.kind == "feature", "strengths"].iloc[0]  # absolute: the paper's s
