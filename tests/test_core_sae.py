"""Checkpoints written by earlier versions still load, and saving writes the same format again."""

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open

from sae_vit.core.sae import FORMAT_VERSION, METADATA_KEY, SAE

SHIPPED = Path(str(resources.files("sae_vit").joinpath("assets", "typo_sae.safetensors")))


def _file(path):
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[METADATA_KEY])
        return meta, {name: fh.get_tensor(name) for name in fh.keys()}


def test_shipped_checkpoint_loads_and_saves_in_the_same_format(tmp_path):
    meta, tensors = _file(SHIPPED)
    assert meta["format_version"] == FORMAT_VERSION == 1
    sae = SAE.load(SHIPPED)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(sae, name), tensors[name].float())
    x = torch.randn(3, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sae.edit(x, lambda f: f), x)

    again_meta, again = _file(sae.save(tmp_path / "again.safetensors"))
    assert again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k].float()) for k in tensors)
    assert {k: v for k, v in again_meta.items() if k != "package_version"} == {
        k: v for k, v in meta.items() if k != "package_version"
    }


# -- the metadata schema and the weights check (issue 15) ----------------------------------------------------------
import pytest  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sae_vit.core.errors import SaeVitError  # noqa: E402
from sae_vit.core.sae import SAEConfig, read_checkpoint  # noqa: E402


def write_checkpoint(path, meta, tensors=None):
    """A checkpoint file with metadata ``meta`` (any JSON value) and, by default, valid weights for d_in 8, d_sae 16."""
    sae = SAE(SAEConfig(d_in=8, d_sae=16, k=4))
    tensors = tensors or {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


GOOD = {"format_version": 1, "d_in": 8, "d_sae": 16, "architecture": "topk", "k": 4, "l1_coefficient": None,
        "normalization": "none", "model": "toy", "layer": 2, "site": "resid_post", "tokens": "cls", "training": {}}


@pytest.mark.parametrize("change, message", [
    ({"d_in": 8.0}, "d_in must be a positive integer"),
    ({"d_sae": "16"}, "d_sae must be a positive integer"),
    ({"k": True}, "integer k"),
    ({"k": 8.5}, "integer k"),
    ({"k": 0}, "integer k"),
    ({"k": 17}, "integer k"),
    ({"tokens": "foo"}, "tokens must be one of"),
    ({"site": "attn"}, "site must be one of"),
    ({"layer": -1}, "layer must be"),
    ({"layer": "8"}, "layer must be"),
    ({"architecture": "gated"}, "unknown SAE architecture"),
    ({"normalization": None}, "unknown normalisation"),
    ({"l1_coefficient": float("nan")}, "l1_coefficient"),
    ({"model": 3}, "model must be a string"),
    ({"training": []}, "training must be an object"),
    ({"d_in": None}, "d_in must be"),
])
def test_wrong_metadata_types_are_refused(tmp_path, change, message):
    path = write_checkpoint(tmp_path / "sae.safetensors", {**GOOD, **change})
    with pytest.raises(SaeVitError, match=message):
        read_checkpoint(path)


@pytest.mark.parametrize("meta, message", [([1, 2], "is a list, not an object"), (None, "NoneType, not an object"),
                                           ("x", "str, not an object"), ({"format_version": 1}, "no d_in, d_sae")])
def test_metadata_that_is_not_an_object_is_refused(tmp_path, meta, message):
    with pytest.raises(SaeVitError, match=message):
        read_checkpoint(write_checkpoint(tmp_path / "sae.safetensors", meta))


@pytest.mark.parametrize("name", ["W_enc", "b_enc", "W_dec", "b_dec"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weights_are_refused_naming_the_tensor(tmp_path, name, bad):
    sae = SAE(SAEConfig(d_in=8, d_sae=16, k=4))
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    tensors[name].view(-1)[3] = bad
    path = write_checkpoint(tmp_path / "sae.safetensors", GOOD, tensors)
    with pytest.raises(SaeVitError, match=f"tensor {name} holds 1 NaN or infinite"):
        SAE.load(path)
    read_checkpoint(write_checkpoint(tmp_path / "ok.safetensors", GOOD))  # the same file without it loads


def test_integer_weights_are_refused(tmp_path):
    sae = SAE(SAEConfig(d_in=8, d_sae=16, k=4))
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    tensors["b_dec"] = tensors["b_dec"].to(torch.int8)
    with pytest.raises(SaeVitError, match="b_dec is int8, not a float type"):
        read_checkpoint(write_checkpoint(tmp_path / "sae.safetensors", GOOD, tensors))
