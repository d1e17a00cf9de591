"""Every file sae-vit writes goes through :mod:`sae_vit.core.atomic`: it gets the permissions the umask allows
(not mkstemp's private 0600, nor a fixed 0644), and a write that fails leaves neither a temporary file nor a
half-written destination."""

import os

import pytest
import torch

from sae_vit.core import atomic
from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.core.text import TextHead


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _toy_clip():
    from sae_vit.world import toyclip

    return toyclip.ToyClip(toyclip.ToyClipConfig(width=32, heads=2, text_width=32, depth=2, text_depth=1))


def _write_sae(out):
    return SAE(SAEConfig(d_in=8, d_sae=16, k=2)).save(out / "sae.safetensors")


def _write_text_embeddings(out):
    out.mkdir()
    return TextHead.save_embeddings(out / "t.safetensors", ["dog", "cat"], torch.randn(2, 4))


def _write_toy_clip(out):
    from sae_vit.world.toyclip import save_toy_clip

    return save_toy_clip(_toy_clip(), out / "toy.safetensors")


def _write_saelens_folder(out):
    from sae_vit.io.interop import to_saelens

    return to_saelens(SAE(SAEConfig(d_in=8, d_sae=16, k=2, layer=1)), out)


SAFETENSORS_WRITERS = [_write_sae, _write_text_embeddings, _write_toy_clip, _write_saelens_folder]


def _write_world_export(out):
    from sae_vit.world.scenes import export_task

    return export_task("waterbirds", out, n=2, splits=("test",))


def _write_json_csv_copy(out):
    import pandas as pd

    atomic.write_json(out / "a.json", {"x": 1})
    atomic.write_csv(out / "b.csv", pd.DataFrame({"x": [1, 2]}))
    return atomic.atomic_copy(out / "a.json", out / "sub" / "c.json")


@pytest.mark.parametrize("write", SAFETENSORS_WRITERS + [_write_world_export, _write_json_csv_copy],
                         ids=lambda f: f.__name__[len("_write_"):])
def test_files_get_the_umask_permissions(tmp_path, umask, write):
    out = tmp_path / "out"
    write(out)
    paths = [out, *out.rglob("*")]
    assert len(paths) > 1
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert oct(p.stat().st_mode & 0o777) == oct(want), p
        assert not p.name.endswith((".tmp", ".old")), p


def test_cache_files_get_the_umask_permissions(tmp_path, umask, tiny_backbone, image_dir):
    from sae_vit.io.cache import write_cache
    from sae_vit.io.images import folder_source

    out = tmp_path / "cache"
    write_cache(tiny_backbone, folder_source(image_dir), out, [0], tokens="cls", images_per_shard=4)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files if p.suffix != ".lock") == ["manifest.json", "shard_00000.safetensors",
                                                                     "shard_00001.safetensors", "shard_00002.safetensors"]
    assert [p.name for p in files if p.suffix == ".lock"] == [".saevit.lock"]  # stays (see io.cache.cache_lock)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}


@pytest.mark.parametrize("write", SAFETENSORS_WRITERS, ids=lambda f: f.__name__[len("_write_"):])
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, write):
    import safetensors.torch

    def fail(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        write(out)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = atomic.write_text(tmp_path / "a.txt", "old\n")

    def fail(tmp):
        tmp.write_text("new, half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic.atomic_write(path, fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
