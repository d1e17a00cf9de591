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
