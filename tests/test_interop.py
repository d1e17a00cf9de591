"""Interop with SAELens, EleutherAI sparsify and ViT-Prisma.

Each foreign checkpoint is written by hand in that library's layout (file names, config keys, tensor names
and orientations), and the imported SAE must reconstruct what the library's own forward pass computes,
written out below from their source, to 1e-5.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sae_vit.cli import app
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.io.interop import (
    convert,
    detect_format,
    export,
    from_prisma,
    from_saelens,
    from_sparsify,
    to_saelens,
)

D_IN, D_SAE = 16, 48
runner = CliRunner()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing in this file may open a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def weights(seed=0, d_in=D_IN, d_sae=D_SAE):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.3,
    }


def acts(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 3 + 0.5


def topk_relu(pre, k):
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())


# -- reference forward passes, transcribed from each library ---------------------------------------------
def prisma_forward(x, t, act="relu", k=None, norm="layer_norm"):
    """vit_prisma/sae/sae.py StandardSparseAutoencoder.encode/decode with run_time_activation_ln_in/out."""
    if norm == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        xc = x - mu
        std = xc.std(-1, keepdim=True)
        x = xc / (std + 1e-5)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    f = topk_relu(pre, k) if act == "topk" else pre.relu()
    out = f @ t["W_dec"] + t["b_dec"]
    if norm == "layer_norm":
        out = out * std + mu
    return out, f


def saelens_forward(x, t, cfg):
    """sae_lens BaseSAE.process_sae_in / encode / decode for standard and topk SAEs."""
    norm = cfg.get("normalize_activations", "none")
    if norm == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        xc = x - mu
        std = xc.std(-1, keepdim=True)
        x = xc / (std + 1e-5)
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    k = cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k")
    f = topk_relu(pre, k) if k else pre.relu()
    scaled = f * t["scaling_factor"] if cfg.get("finetuning_scaling_factor") else f
    out = scaled @ t["W_dec"] + t["b_dec"]
    if norm == "layer_norm":
        out = out * std + mu
    return out, f


def sparsify_forward(x, t, k):
    """sparsify SparseCoder.encode (x - b_dec, relu(linear), topk) and decode (+ b_dec)."""
    pre = F.relu(F.linear(x - t["b_dec"], t["encoder.weight"], t["encoder.bias"]))
    vals, idx = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter_(-1, idx, vals)
    return f @ t["W_dec"] + t["b_dec"], f


def assert_close(a, b, atol=1e-5):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g}"


# -- ViT-Prisma ----------------------------------------------------------------------------------------
def prisma_config(**over):
    """A config.json as VisionModelSAERunnerConfig.save_config writes it (a subset of its keys)."""
    cfg = {
        "model_class_name": "HookedViT", "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "hook_point_layer": 3, "layer_subtype": "hook_resid_post", "hook_point_head_index": None,
        "context_size": 50, "use_patches_only": False, "cls_token_only": False, "d_in": D_IN,
        "activation_fn_str": "relu", "activation_fn_kwargs": {}, "normalize_activations": "layer_norm",
        "initialization_method": "encoder_transpose_decoder", "architecture": "standard",
        "b_dec_init_method": "geometric_median", "expansion_factor": D_SAE // D_IN, "d_sae": D_SAE,
        "l1_coefficient": 1e-4, "lp_norm": 1, "lr": 4e-4, "is_transcoder": False,
        "dtype": {"__type__": "torch.dtype", "value": "torch.float32"},
        "device": {"__type__": "torch.device", "value": "cuda"},
    }
    cfg.update(over)
    return cfg


def write_prisma(folder, cfg, t, name="n_images_2600058.pt"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save(t, folder / name)
    return folder


def test_prisma_relu_layer_norm_reconstructs_as_prisma(tmp_path):
    t = weights()
    folder = write_prisma(tmp_path / "prisma", prisma_config(), t)
    assert detect_format(folder) == "prisma"
    sae = from_prisma(folder)
    cfg = sae.cfg
    assert (cfg.architecture, cfg.k, cfg.l1_coefficient, cfg.normalization) == ("relu", None, 1e-4, "layer_norm")
    assert (cfg.model, cfg.layer, cfg.site, cfg.tokens) == ("vit_base_patch32_clip_224.datacompxl", 3,
                                                             "resid_post", "all")
    x = acts()
    ref_out, ref_f = prisma_forward(x, t)
    out = sae(x)
    assert_close(out.latents, ref_f)
    assert_close(out.x_hat, ref_out)
    assert (ref_f > 0).sum(-1).float().mean() > 5  # the test exercises real sparse codes, not all zeros


@pytest.mark.parametrize("subtype,flags,site,layer,tokens", [
    ("hook_mlp_out", {"cls_token_only": True}, "mlp_out", 3, "cls"),
    ("hook_resid_pre", {"use_patches_only": True}, "resid_post", 2, "patches"),
])
def test_prisma_topk_hooks_and_tokens(tmp_path, subtype, flags, site, layer, tokens):
    t = weights(seed=2)
    cfg = prisma_config(layer_subtype=subtype, activation_fn_str="topk", activation_fn_kwargs={"k": 6},
                        normalize_activations="none", model_name="some/other-vit", **flags)
    sae = from_prisma(write_prisma(tmp_path / "p", cfg, t, name="weights.pt") / "weights.pt")
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.normalization) == ("topk", 6, "none")
    assert (sae.cfg.site, sae.cfg.layer, sae.cfg.tokens, sae.cfg.model) == (site, layer, tokens, "some/other-vit")
    x = acts()
    ref_out, ref_f = prisma_forward(x, t, act="topk", k=6, norm="none")
    out = sae(x)
    assert_close(out.latents, ref_f)
    assert_close(out.x_hat, ref_out)
    assert ((out.latents > 0).sum(-1) <= 6).all()


def test_prisma_convert_cli_then_load(tmp_path):
    t = weights(seed=3)
    folder = write_prisma(tmp_path / "prisma", prisma_config(), t)
    result = runner.invoke(app, ["convert", str(folder), "--to", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    sae = SAE.load(tmp_path / "out")
    assert_close(sae(acts()).x_hat, prisma_forward(acts(), t)[0])
    assert sae.cfg.training["imported_from"]["format"] == "prisma"
    again = runner.invoke(app, ["convert", str(folder), "--to", str(tmp_path / "out")])
    assert again.exit_code == 2 and "--overwrite" in again.output


class _Evil:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    t = weights()
    t["b_enc"] = _Evil(marker)
    folder = write_prisma(tmp_path / "evil", prisma_config(), t)
    with pytest.raises(SaeVitError, match="never unpickles code"):
        from_prisma(folder)
    assert not marker.exists()
    result = runner.invoke(app, ["convert", str(folder), "--to", str(tmp_path / "out.safetensors")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_prisma_unsupported_variants_are_refused(tmp_path):
    t = weights()
    with pytest.raises(SaeVitError, match="gated"):
        from_prisma(write_prisma(tmp_path / "g", prisma_config(architecture="gated"), t))
    with pytest.raises(SaeVitError, match="shape"):
        from_prisma(write_prisma(tmp_path / "s", prisma_config(d_sae=D_SAE * 2), t))


# -- SAELens ---------------------------------------------------------------------------------------------
def write_saelens(folder, cfg, t):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "sae_weights.safetensors"))
    return folder


SAELENS_V5_STANDARD = {  # flat, pre-6.0 (SAELens 4.x / 5.x), like the files on the Hub
    "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cuda",
    "model_name": "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", "hook_name": "blocks.5.hook_mlp_out",
    "hook_layer": 5, "hook_head_index": None, "activation_fn_str": "relu", "activation_fn_kwargs": {},
    "apply_b_dec_to_input": False, "finetuning_scaling_factor": False, "normalize_activations": "none",
    "context_size": 50, "seqpos_slice": [None], "prepend_bos": False, "l1_coefficient": 5.0,
}
SAELENS_V6_TOPK = {  # 6.x: architecture + k at top level, the rest under metadata
    "architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "k": 7,
    "apply_b_dec_to_input": True, "normalize_activations": "layer_norm", "reshape_activations": "none",
    "metadata": {"sae_lens_version": "6.21.0", "hook_name": "blocks.8.hook_resid_post", "model_name": "toy",
                 "hook_head_index": None, "seqpos_slice": [0, 1], "prepend_bos": False},
}
SAELENS_V5_TOPK_SCALED = {
    **SAELENS_V5_STANDARD, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5},
    "apply_b_dec_to_input": True, "normalize_activations": "expected_average_only_in",
    "finetuning_scaling_factor": True, "hook_name": "blocks.4.hook_resid_pre", "seqpos_slice": [1, None],
}


@pytest.mark.parametrize("cfg,expect", [
    (SAELENS_V5_STANDARD, ("relu", None, "none", 5, "mlp_out", "all", "vit_base_patch32_clip_224.datacompxl")),
    (SAELENS_V6_TOPK, ("topk", 7, "layer_norm", 8, "resid_post", "cls", "toy")),
    (SAELENS_V5_TOPK_SCALED, ("topk", 5, "none", 3, "resid_post", "patches", "vit_base_patch32_clip_224.datacompxl")),
])
def test_saelens_import_reconstructs_as_saelens(tmp_path, cfg, expect):
    t = weights(seed=4)
    t["scaling_factor"] = torch.rand(D_SAE, generator=torch.Generator().manual_seed(5)) + 0.5
    folder = write_saelens(tmp_path / "blocks.x", cfg, t)
    assert detect_format(folder) == "saelens"
    sae = from_saelens(folder)
    c = sae.cfg
    assert (c.architecture, c.k, c.normalization, c.layer, c.site, c.tokens, c.model) == expect
    x = acts()
    ref_out, ref_f = saelens_forward(x, t, cfg)
    out = sae(x)
    assert_close(out.x_hat, ref_out)
    assert_close(out.latents, ref_f)  # folding b_dec / the scaling factor leaves the latents unchanged


def test_saelens_unsupported_variants_are_refused(tmp_path):
    t = weights()
    with pytest.raises(SaeVitError, match="jumprelu"):
        from_saelens(write_saelens(tmp_path / "j", {**SAELENS_V5_STANDARD, "architecture": "jumprelu"},
                                   {**t, "threshold": torch.zeros(D_SAE)}))
    with pytest.raises(SaeVitError, match="constant_norm_rescale"):
        from_saelens(write_saelens(tmp_path / "c", {**SAELENS_V5_STANDARD,
                                                    "normalize_activations": "constant_norm_rescale"}, t))
    with pytest.raises(SaeVitError, match="hook_attn_out"):
        from_saelens(write_saelens(tmp_path / "a", {**SAELENS_V5_STANDARD, "hook_name": "blocks.2.hook_attn_out"}, t))


# -- sparsify --------------------------------------------------------------------------------------------
def test_sparsify_import_reconstructs_as_sparsify(tmp_path):
    g = torch.Generator().manual_seed(6)
    t = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5,  # nn.Linear(d_in, d_sae).weight
        "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_SAE**0.5,
        "b_dec": torch.randn(D_IN, generator=g) * 0.3,
    }
    folder = tmp_path / "layers.6"
    folder.mkdir()
    cfg = {"expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE, "k": 8, "multi_topk": False,
           "skip_connection": False, "transcode": False, "activation": "topk", "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(t, str(folder / "sae.safetensors"))
    assert detect_format(folder) == "sparsify"
    sae = from_sparsify(folder)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.d_sae, sae.cfg.layer, sae.cfg.site) == ("topk", 8, D_SAE, 6,
                                                                                            "resid_post")
    x = acts()
    ref_out, ref_f = sparsify_forward(x, t, 8)
    out = sae(x)
    assert_close(out.latents, ref_f)
    assert_close(out.x_hat, ref_out)
    path = convert(folder, tmp_path / "conv.safetensors", tokens="cls")
    loaded = SAE.load(path)
    assert loaded.cfg.tokens == "cls"
    assert torch.equal(loaded.W_enc, t["encoder.weight"].T)


# -- export to SAELens and back --------------------------------------------------------------------------
def our_sae(architecture="topk", normalization="layer_norm", seed=7):
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture, k=6 if architecture == "topk" else None,
                    l1_coefficient=None if architecture == "topk" else 8e-5, normalization=normalization,
                    model="toy", layer=4, site="mlp_out", tokens="patches",
                    training={"n_tokens": 123456, "l0": 5.9, "fvu": 0.125, "dead_fraction": 0.0})
    sae = SAE(cfg)
    with torch.no_grad():
        for name, value in weights(seed).items():
            getattr(sae, name).copy_(value)
        sae.scale.fill_(0.37)
    return sae


@pytest.mark.parametrize("architecture,normalization", [("topk", "layer_norm"), ("relu", "none")])
def test_export_saelens_round_trip_is_exact(tmp_path, architecture, normalization):
    sae = our_sae(architecture, normalization)
    src = sae.save(tmp_path / "sae.safetensors")
    result = runner.invoke(app, ["export", str(src), "--to", str(tmp_path / "saelens")])
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    assert cfg["architecture"] == {"topk": "topk", "relu": "standard"}[architecture]
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == normalization
    assert cfg["metadata"]["hook_name"] == cfg["hook_name"] == "blocks.4.hook_mlp_out"
    assert cfg["metadata"]["seqpos_slice"] == [1, None]
    assert cfg.get("k") == (6 if architecture == "topk" else None)
    tensors = load_file(str(tmp_path / "saelens" / "sae_weights.safetensors"))
    assert sorted(tensors) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    # What SAELens would compute from the exported files is what we compute.
    x = acts()
    assert_close(saelens_forward(x, tensors, cfg)[0], sae(x).x_hat)

    back = convert(tmp_path / "saelens", tmp_path / "back.safetensors")
    again = SAE.load(back)
    assert asdict(again.cfg) == asdict(sae.cfg)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(again, name), getattr(sae, name)), name


def test_export_constant_scale_folds_into_weights(tmp_path):
    sae = our_sae("topk", "constant")
    folder = to_saelens(sae, tmp_path / "out")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none"
    x = acts()
    assert_close(saelens_forward(x, load_file(str(folder / "sae_weights.safetensors")), cfg)[0], sae(x).x_hat)
    with pytest.raises(SaeVitError, match="--overwrite"):
        to_saelens(sae, tmp_path / "out")
    assert to_saelens(sae, tmp_path / "out", overwrite=True) == folder


def test_export_refuses_unknown_format_and_missing_input(tmp_path):
    with pytest.raises(SaeVitError, match="saelens"):
        export(our_sae().save(tmp_path / "a.safetensors"), tmp_path / "x", fmt="onnx")
    with pytest.raises(SaeVitError, match="not an SAE folder"):
        detect_format(tmp_path)
