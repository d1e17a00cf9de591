"""The registry of the paper's released SAEs (sae_vit.io.released) and loading one by name, offline.

The Hub is a cache laid out on disk exactly as huggingface_hub writes it, holding a tiny fake repo in ViT-Prisma's
layout (config.json + n_images_2600058.pt) under the registered repo id, with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import io
import json
import re

import pytest
import torch

from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE
from sae_vit.io.released import get_released, is_released_name, list_released, released_uri
from sae_vit.io.resolve import find_saes, resolve_sae_path
from tests.conftest import HUB_COMMIT as COMMIT
from tests.conftest import lay_out_hub_cache

REPO_RE = re.compile(r"^Prisma-Multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-(\d+)-hook_"
                     r"(resid_post|mlp_out)-l1-(1e-05|5e-05|8e-05|0\.0001)$")
pytestmark = pytest.mark.usefixtures("offline_hub")  # every test: offline, private caches


# -- the registry --------------------------------------------------------------------------------------------
def test_every_layer_and_site_has_a_recommended_sae():
    for site in ("resid_post", "mlp_out"):
        for layer in range(12):
            row = get_released(f"clip-b32/{site}/layer_{layer}")
            assert row.recommended and (row.layer, row.site) == (layer, site)
            # the ViT-Prisma README's table: 1e-05 everywhere but layer 2 resid_post and layer 11 mlp_out
            special = (site, layer) in {("resid_post", 2), ("mlp_out", 11)}
            assert row.l1_coefficient == (5e-05 if special else 1e-05)
            assert get_released(f"clip-b32/{site}/layer_{layer}/l1-{row.l1_coefficient}") is row


def test_rows_describe_their_repos():
    rows = list_released()
    assert len(rows) == len({r.repo for r in rows}) == 45  # 24 recommended + 21 other coefficients seen
    assert rows == sorted(rows, key=lambda r: (("resid_post", "mlp_out").index(r.site), r.layer, r.l1_coefficient))
    for r in rows:
        m = REPO_RE.match(r.repo)
        assert m, r.repo
        assert (int(m[1]), m[2], float(m[3])) == (r.layer, r.site, r.l1_coefficient)
        assert r.uri == f"hf://{r.repo}" and released_uri(r.name) == r.uri
        assert (r.tokens, r.architecture, r.expansion, r.d_sae, r.k) == ("all", "relu", 64, 49152, None)
        assert r.model == "vit_base_patch32_clip_224.datacompxl"
        assert (r.l0 is None) == (r.explained_variance is None)
        assert r.l0 is None or (r.l0 > 0 and 0 < r.explained_variance <= 100)
        assert all(get_released(n) is r for n in r.names)
    # the paper's reference numbers (PAPER.md §1) are the model cards'
    layer_3 = get_released("clip-b32/resid_post/layer_3/l1-0.0001")
    assert (layer_3.l0, layer_3.explained_variance) == (292.96, 81.22)
    assert get_released("clip-b32/mlp_out/layer_0/l1-0.0001").l0 == 57.31
    assert get_released("clip-b32/mlp_out/layer_1/l1-5e-05").explained_variance == 90.68


def test_unknown_names_are_refused_with_suggestions():
    assert is_released_name("clip-b32/resid_post/layer_8") and not is_released_name("saes/layer_8")
    with pytest.raises(SaeVitError, match=r"did you mean clip-b32/resid_post/layer_11\b") as info:
        get_released("clip-b32/resid_post/layer_11/l1-3e-05")
    assert "saevit list --released" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SaeVitError, match="not a registered released SAE"):
        resolve_sae_path("clip-b32/attn_out/layer_4")


# -- loading by name -----------------------------------------------------------------------------------------
def fake_prisma_repo(layer: int, subtype: str, l1: float, seed: int = 0):
    """A tiny SAE (d_in 8, 32 latents) in the released repos' layout, and its tensors."""
    g = torch.Generator().manual_seed(seed)
    t = {"W_enc": torch.randn(8, 32, generator=g) / 3, "b_enc": torch.randn(32, generator=g) * 0.1,
         "W_dec": torch.randn(32, 8, generator=g) / 6, "b_dec": torch.randn(8, generator=g) * 0.2}
    buf = io.BytesIO()
    torch.save(t, buf)
    cfg = {"model_class_name": "HookedViT", "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
           "hook_point_layer": layer, "layer_subtype": subtype, "context_size": 50, "use_patches_only": False,
           "cls_token_only": False, "d_in": 8, "expansion_factor": 4, "d_sae": 32, "activation_fn_str": "relu",
           "activation_fn_kwargs": {}, "normalize_activations": "layer_norm", "architecture": "standard",
           "l1_coefficient": l1, "lr": 4e-4, "is_transcoder": False}
    files = {"config.json": json.dumps(cfg).encode(), "n_images_2600058.pt": buf.getvalue(),
             "README.md": b"# CLIP-B-32 Sparse Autoencoder x64 vanilla\n", ".gitattributes": b"*.pt filter=lfs\n"}
    return files, t


def prisma_forward(x, t):
    """ViT-Prisma's forward for these SAEs: layer-norm in, ReLU, decode, de-normalise with the same mu, std."""
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).std(-1, keepdim=True)
    f = (((x - mu) / (std + 1e-5) - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu()
    return (f @ t["W_dec"] + t["b_dec"]) * std + mu, f


@pytest.mark.parametrize("name,layer,subtype,site", [
    ("clip-b32/resid_post/layer_8", 8, "hook_resid_post", "resid_post"),
    ("clip-b32/mlp_out/layer_11", 11, "hook_mlp_out", "mlp_out"),
    ("clip-b32/resid_post/layer_11/l1-8e-05", 11, "hook_resid_post", "resid_post"),
])
def test_load_a_released_sae_by_name_offline(name, layer, subtype, site, tmp_path, offline_hub):
    row = get_released(name)
    files, t = fake_prisma_repo(layer, subtype, row.l1_coefficient)
    lay_out_hub_cache(offline_hub, row.repo, files)
    sae = SAE.from_pretrained(name)
    c = sae.cfg
    assert (c.layer, c.site, c.tokens, c.architecture, c.l1_coefficient, c.normalization, c.model) == (
        row.layer, row.site, row.tokens, row.architecture, row.l1_coefficient, "layer_norm", row.model)
    assert c.training["source"] == f"hf://{row.repo}@{COMMIT}"
    x = torch.randn(5, 50, 8, generator=torch.Generator().manual_seed(1)) * 2 + 0.3
    ref_out, ref_f = prisma_forward(x, t)
    out = sae(x)
    assert (out.latents - ref_f).abs().max() < 1e-5 and (out.x_hat - ref_out).abs().max() < 1e-5
    # converted once, into the converted-SAE cache keyed by the commit; every resolver path agrees
    path = resolve_sae_path(name)
    expected = (tmp_path / "hf_home" / "sae_vit" / "converted" / f"{row.repo.replace('/', '--')}@{COMMIT}"
                / "sae.safetensors")
    assert path == expected and find_saes([name]) == [expected]


def test_a_local_path_spelled_like_a_name_wins(tmp_path, monkeypatch):
    from sae_vit.core.sae import SAEConfig

    monkeypatch.chdir(tmp_path)
    local = SAE(SAEConfig(d_in=8, d_sae=16, k=2, layer=8)).save("clip-b32/resid_post/layer_8/sae.safetensors")
    assert resolve_sae_path("clip-b32/resid_post/layer_8") == local
