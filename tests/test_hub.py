"""Hub push / pull / list, offline.

Pulls go through a Hugging Face cache laid out on disk exactly as huggingface_hub writes it
(``models--owner--repo/{blobs,refs,snapshots}``) with HF_HUB_OFFLINE=1; pushes replace only HfApi's
network methods and check the files and the model card they would upload.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from huggingface_hub import HfApi
from typer.testing import CliRunner

from sae_vit.cli import app
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.io.hub import HubRef, list_repo, model_card, parse_ref, pull, push, resolve_hf_uri
from tests.conftest import HUB_COMMIT as COMMIT
from tests.conftest import lay_out_hub_cache

OTHER = "fedcba9876543210fedcba9876543210fedcba98"
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("offline_hub")  # every test: offline, private caches


def make_sae(layer=2, tokens="all", site="resid_post", model="toy", seed=0, l0=11.5, fvu=0.0625):
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4, model=model, layer=layer, site=site, tokens=tokens,
                    training={"l0": l0, "fvu": fvu, "dead_fraction": 0.0})
    sae = SAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    return sae


def sae_bytes(sae, tmp_path):
    path = sae.save(tmp_path / f"tmp_{id(sae)}.safetensors")
    data = path.read_bytes()
    path.unlink()
    return data


# -- references --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("hf://owner/repo", HubRef("owner/repo", "", None)),
    ("owner/repo/layer_8/cls@v1", HubRef("owner/repo", "layer_8/cls", "v1")),
    ("hf://owner/repo@refs/pr/3/layer_8/cls", HubRef("owner/repo", "layer_8/cls", "refs/pr/3")),
    ("hf://owner/repo@main", HubRef("owner/repo", "", "main")),
])
def test_parse_ref(text, expected):
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["hf://owner", "hf://own er/repo", "owner/repo@"])
def test_parse_ref_rejects(text):
    with pytest.raises(SaeVitError, match="owner/repo"):
        parse_ref(text)


# -- resolve / pull through the cache ------------------------------------------------------------------
def test_resolve_our_layout_offline(tmp_path, offline_hub):
    a, b = make_sae(2, "all", seed=1), make_sae(8, "cls", site="mlp_out", seed=2)
    snap = lay_out_hub_cache(offline_hub, "owner/saes", {"layer_2/all/sae.safetensors": sae_bytes(a, tmp_path),
                                                     "layer_8/mlp_out/cls/sae.safetensors": sae_bytes(b, tmp_path)})
    assert resolve_hf_uri("hf://owner/saes/layer_2/all") == snap / "layer_2/all/sae.safetensors"
    assert resolve_hf_uri("hf://owner/saes/layer_2/all@main") == snap / "layer_2/all/sae.safetensors"
    assert resolve_hf_uri(f"hf://owner/saes/layer_2/all@{COMMIT}") == snap / "layer_2/all/sae.safetensors"
    assert resolve_hf_uri("hf://owner/saes/layer_8/mlp_out/cls/sae.safetensors") == (
        snap / "layer_8/mlp_out/cls/sae.safetensors")
    loaded = SAE.load("hf://owner/saes/layer_8/mlp_out/cls")
    assert loaded.cfg.layer == 8 and loaded.cfg.site == "mlp_out"
    assert torch.equal(loaded.W_dec, b.W_dec) and torch.equal(loaded.b_enc, b.b_enc)


def test_missing_offline_names_hf_hub_offline_and_cache(offline_hub):
    with pytest.raises(SaeVitError) as info:
        resolve_hf_uri("hf://owner/absent/layer_2/all")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and str(offline_hub) in msg and "\n" not in msg
    result = runner.invoke(app, ["pull", "owner/absent"])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE" in result.output and "Traceback" not in result.output


def prisma_files():
    g = torch.Generator().manual_seed(3)
    tensors = {"W_enc": torch.randn(8, 32, generator=g), "b_enc": torch.randn(32, generator=g),
               "W_dec": torch.randn(32, 8, generator=g), "b_dec": torch.randn(8, generator=g)}
    buf = io.BytesIO()
    torch.save(tensors, buf)
    config = {"model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", "hook_point_layer": 11,
              "layer_subtype": "hook_resid_post", "d_in": 8, "d_sae": 32, "expansion_factor": 4,
              "activation_fn_str": "relu", "activation_fn_kwargs": {}, "normalize_activations": "layer_norm",
              "cls_token_only": False, "use_patches_only": False, "l1_coefficient": 8e-5, "architecture": "standard"}
    return tensors, {"config.json": json.dumps(config).encode(), "n_images_2600058.pt": buf.getvalue(),
                     "README.md": b"# Prisma SAE\n"}


def test_prisma_repo_converts_once_into_local_cache(tmp_path, offline_hub):
    tensors, files = prisma_files()
    repo = "Prisma-Multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-11-hook_resid_post-l1-8e-05"
    lay_out_hub_cache(offline_hub, repo, files)
    path = resolve_hf_uri(f"hf://{repo}")
    expected = (tmp_path / "hf_home" / "sae_vit" / "converted" / f"{repo.replace('/', '--')}@{COMMIT}"
                / "sae.safetensors")
    assert path == expected
    mtime = path.stat().st_mtime_ns
    assert resolve_hf_uri(f"hf://{repo}@main") == path and path.stat().st_mtime_ns == mtime  # reused
    sae = SAE.load(f"hf://{repo}")
    assert (sae.cfg.layer, sae.cfg.site, sae.cfg.normalization, sae.cfg.model) == (
        11, "resid_post", "layer_norm", "vit_base_patch32_clip_224.datacompxl")
    assert sae.cfg.training["source"] == f"hf://{repo}@{COMMIT}"
    assert torch.equal(sae.W_enc, tensors["W_enc"]) and torch.equal(sae.b_dec, tensors["b_dec"])
    # The weights file named directly resolves to the same conversion.
    assert resolve_hf_uri(f"hf://{repo}/n_images_2600058.pt") == path


def test_pull_offline_with_out_and_revisions(tmp_path, offline_hub):
    a, b = make_sae(2, "all", seed=1), make_sae(2, "cls", seed=2)
    lay_out_hub_cache(offline_hub, "owner/saes", {"layer_2/all/sae.safetensors": sae_bytes(a, tmp_path),
                                              "layer_2/cls/sae.safetensors": sae_bytes(b, tmp_path),
                                              "README.md": b"card"})
    lay_out_hub_cache(offline_hub, "owner/saes", {"layer_2/all/sae.safetensors": sae_bytes(b, tmp_path)},
                  commit=OTHER, ref="v2")
    pulled = pull("owner/saes", tmp_path / "out")
    assert [p.path for p in pulled] == ["layer_2/all", "layer_2/cls"]
    assert SAE.load(tmp_path / "out/layer_2/cls").cfg.tokens == "cls"
    with pytest.raises(SaeVitError, match="--overwrite"):
        pull("owner/saes", tmp_path / "out")
    only = pull("owner/saes/layer_2/all@v2", tmp_path / "v2")
    assert [p.local for p in only] == [tmp_path / "v2/sae.safetensors"]
    assert torch.equal(SAE.load(tmp_path / "v2").W_enc, b.W_enc)
    result = runner.invoke(app, ["pull", "owner/saes/layer_2/cls"])
    assert result.exit_code == 0, result.output
    assert "layer_2/cls" in result.output


def test_list_from_cache_and_offline_error(tmp_path, offline_hub):
    lay_out_hub_cache(offline_hub, "owner/mixed", {
        "layer_2/all/sae.safetensors": sae_bytes(make_sae(), tmp_path),
        "layer_8/mlp_out/cls/sae.safetensors": sae_bytes(make_sae(8, "cls", "mlp_out"), tmp_path),
        "blocks.3.hook_resid_post/cfg.json": b"{}", "blocks.3.hook_resid_post/sae_weights.safetensors": b"x",
        "config.json": b"{}", "weights.pt": b"x", "README.md": b"card",
    })
    entries, from_cache = list_repo("owner/mixed")
    assert from_cache
    assert [(e.path, e.format, e.layer, e.site, e.tokens) for e in entries] == [
        ("", "prisma", None, None, None),
        ("blocks.3.hook_resid_post", "saelens", None, None, None),
        ("layer_2/all", "sae_vit", 2, "resid_post", "all"),
        ("layer_8/mlp_out/cls", "sae_vit", 8, "mlp_out", "cls"),
    ]
    result = runner.invoke(app, ["list", "owner/mixed"])
    assert result.exit_code == 0 and "layer_8/mlp_out/cls" in result.output
    assert "hf://owner/mixed/<path>" in result.output
    with pytest.raises(SaeVitError, match="HF_HUB_OFFLINE"):
        list_repo("owner/never-pulled")


# -- push ----------------------------------------------------------------------------------------------
def test_push_builds_layout_and_card(tmp_path, fake_hub):
    real = "vit_base_patch32_clip_224.datacompxl"
    make_sae(8, "cls", model=real, l0=31.25, fvu=0.1875).save(tmp_path / "saes/layer_8/cls/sae.safetensors")
    make_sae(8, "patches", site="mlp_out", model=real).save(tmp_path / "saes/x/y.safetensors")
    (tmp_path / "saes/notes.txt").write_text("not an SAE")
    result = push(tmp_path / "saes", "me/clip-saes", private=True, revision="exp1", message="first")
    assert set(fake_hub["files"]) == {"README.md", "layer_8/cls/sae.safetensors",
                                      "layer_8/mlp_out/patches/sae.safetensors"}
    assert result.files == sorted(fake_hub["files"])
    assert fake_hub["files"]["layer_8/cls/sae.safetensors"] == (tmp_path / "saes/layer_8/cls/sae.safetensors").read_bytes()
    assert fake_hub["create_repo"] == ("me/clip-saes", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert fake_hub["create_branch"][1]["branch"] == "exp1"
    assert fake_hub["upload"][1]["revision"] == "exp1" and fake_hub["upload"][1]["commit_message"] == "first"
    card = fake_hub["files"]["README.md"].decode()
    header = card.split("---")[1]
    assert "library_name: sae-vit" in header and "- sparse-autoencoder" in header
    assert "base_model: laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K" in header
    assert "\nlicense:" not in header  # left to the user
    assert "| `layer_8/cls` | 8 | cls | resid_post | topk | 32 | 4 | 31.2 | 0.1875 |" in card
    assert "| `layer_8/mlp_out/patches` | 8 | patches | mlp_out | topk | 32 | 4 | 11.5 | 0.0625 |" in card


def test_card_base_model_mapping(tmp_path):
    toy = make_sae(model="toy").save(tmp_path / "toy.safetensors")
    other = make_sae(model="vit_large_patch14_clip_224.openai").save(tmp_path / "o.safetensors")
    toy_card = model_card("me/r", {"layer_2/all/sae.safetensors": toy})
    assert "base_model" not in toy_card and "sae-vit toy CLIP" in toy_card
    assert "base_model: timm/vit_large_patch14_clip_224.openai" in model_card("me/r", {"layer_2/all/sae.safetensors": other})


def test_push_cli_and_errors(tmp_path, fake_hub, monkeypatch):
    make_sae().save(tmp_path / "a.safetensors")
    make_sae(seed=5).save(tmp_path / "dir/b.safetensors")
    make_sae(seed=6).save(tmp_path / "dir/c.safetensors")
    result = runner.invoke(app, ["push", str(tmp_path / "a.safetensors"), "me/one"])
    assert result.exit_code == 0, result.output
    assert set(fake_hub["files"]) == {"README.md", "layer_2/all/sae.safetensors"}
    dup = runner.invoke(app, ["push", str(tmp_path / "dir"), "me/two"])
    assert dup.exit_code == 2 and "both belong at layer_2/all" in dup.output

    from huggingface_hub.errors import OfflineModeIsEnabled

    def offline(self, repo_id, **kw):
        raise OfflineModeIsEnabled("offline")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    with pytest.raises(SaeVitError, match="HF_HUB_OFFLINE"):
        push(tmp_path / "a.safetensors", "me/one")
