import json

import pytest
import torch
from safetensors.torch import load_file

from sae_vit.core.errors import SaeVitError
from sae_vit.io import cache as cache_mod
from sae_vit.io.cache import EVAL_EVERY, CacheReader, read_manifest, write_cache
from sae_vit.io.images import csv_source, folder_source
from tests.conftest import write_images


@pytest.fixture
def many_images(tmp_path):
    folder = tmp_path / "many"
    write_images(folder, 45, seed=1)
    return folder


def _tensors(root, layers):
    return {(layer, p.name): load_file(str(p)) for layer in layers for p in sorted((root / f"layer_{layer}").glob("*"))}


def test_cache_writes_layers_and_manifest(tiny_backbone, image_dir, tmp_path):
    out = tmp_path / "cache"
    m = write_cache(tiny_backbone, folder_source(image_dir), out, [1, 3], tokens="all", batch_size=4,
                    images_per_shard=4, dtype="float32")
    assert m["complete"] and m["n_images_cached"] == 10 and m["n_tokens"] == 10 * 101
    assert len(m["shards"]) == 3 and read_manifest(out)["shards"] == m["shards"]
    shard = load_file(str(out / "layer_3" / "shard_00000.safetensors"))
    assert shard["acts"].shape == (4 * 101, 64)
    assert shard["token_index"][:101].tolist() == list(range(101))
    # the stored activations are exactly what the model computes
    images = torch.stack([tiny_backbone.transform(folder_source(image_dir).items[i].open()) for i in range(4)])
    with torch.no_grad():
        ref = tiny_backbone.capture(images, [3])[3].reshape(-1, 64)
    torch.testing.assert_close(shard["acts"], ref)
    assert float(m["mean_norm"]["3"]) > 0


def test_reader_token_selection_and_heldout_split(tiny_backbone, many_images, tmp_path):
    out = tmp_path / "cache"
    write_cache(tiny_backbone, folder_source(many_images), out, [2], tokens="all", images_per_shard=16)
    r = CacheReader(out)
    n_eval_images = sum(1 for i in range(45) if i % EVAL_EVERY == EVAL_EVERY - 1)
    assert r.count(2, "cls", "eval") == n_eval_images
    assert r.count(2, "cls", "train") == 45 - n_eval_images
    assert r.count(2, "patches", "train") == 100 * (45 - n_eval_images)
    assert r.count(2, "all", "all") == 45 * 101
    # one epoch of shuffled batches serves every training token exactly once
    batches = list(r.batches(2, "patches", 512, "train", seed=3, buffer_shards=2, epochs=1.0))
    got = torch.cat(batches)
    assert got.shape == (100 * (45 - n_eval_images), 64)
    want = r.load(2, "patches", "train")
    torch.testing.assert_close(got.sum(0), want.sum(0), atol=1e-2, rtol=1e-4)
    assert not torch.equal(got[:100], want[:100])  # shuffled
    cls_from_all = r.load(2, "cls", "all")
    out2 = tmp_path / "cls_only"
    write_cache(tiny_backbone, folder_source(many_images), out2, [2], tokens="cls", images_per_shard=16)
    torch.testing.assert_close(CacheReader(out2).load(2, "cls", "all"), cls_from_all)
    with pytest.raises(SaeVitError, match="cannot serve"):
        CacheReader(out2).check(2, "patches")
    with pytest.raises(SaeVitError, match="has no layer 5"):
        r.check(5, "cls")


def test_interrupted_cache_resumes_to_identical_result(tiny_backbone, many_images, tmp_path, monkeypatch):
    src = folder_source(many_images)
    full = tmp_path / "full"
    write_cache(tiny_backbone, src, full, [0, 2], images_per_shard=8, batch_size=5)

    part = tmp_path / "part"
    m = write_cache(tiny_backbone, src, part, [0, 2], images_per_shard=8, batch_size=5, stop_after_shards=2)
    assert not m["complete"] and len(m["shards"]) == 2

    # crash in the middle of the next shard: layer 0's file is written, layer 2's write fails
    real_save = cache_mod._save_shard
    calls = {"n": 0}

    def flaky(path, tensors):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_save(path, tensors)

    monkeypatch.setattr(cache_mod, "_save_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_cache(tiny_backbone, src, part, [0, 2], images_per_shard=8, batch_size=5)
    manifest = read_manifest(part)
    assert len(manifest["shards"]) == 2  # the half-written shard is not counted ...
    for s in manifest["shards"]:  # ... and every counted shard exists on disk
        for layer in (0, 2):
            assert cache_mod.shard_path(part, layer, s["index"]).is_file()
    assert not list(part.rglob("*.tmp"))
    monkeypatch.setattr(cache_mod, "_save_shard", real_save)

    m = write_cache(tiny_backbone, src, part, [0, 2], images_per_shard=8, batch_size=5)
    assert m["complete"]
    a, b = _tensors(full, [0, 2]), _tensors(part, [0, 2])
    assert a.keys() == b.keys()
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert json.loads((full / "manifest.json").read_text())["n_tokens"] == m["n_tokens"]


def test_cache_refuses_to_overwrite_and_other_settings(tiny_backbone, image_dir, tmp_path):
    out = tmp_path / "c"
    src = folder_source(image_dir)
    write_cache(tiny_backbone, src, out, [1], images_per_shard=4, stop_after_shards=1)
    with pytest.raises(SaeVitError, match="other settings"):
        write_cache(tiny_backbone, src, out, [2], images_per_shard=4)
    write_cache(tiny_backbone, src, out, [1], images_per_shard=4)
    with pytest.raises(SaeVitError, match="already holds a finished cache"):
        write_cache(tiny_backbone, src, out, [1], images_per_shard=4)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(SaeVitError, match="not empty"):
        write_cache(tiny_backbone, src, tmp_path / "junk", [1])
    m = write_cache(tiny_backbone, src, out, [2], images_per_shard=4, overwrite=True)
    assert m["layers"] == [2] and not (out / "layer_1").exists()


def test_unreadable_images_are_skipped_and_counted(tiny_backbone, image_dir, tmp_path):
    (image_dir / "broken.png").write_bytes(b"not an image")
    m = write_cache(tiny_backbone, folder_source(image_dir), tmp_path / "c", [0], images_per_shard=4)
    assert m["n_images_cached"] == 10 and m["skipped"] == ["broken.png"]


def test_sources_errors(tmp_path):
    with pytest.raises(SaeVitError, match="does not exist"):
        folder_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaeVitError, match="No images found"):
        folder_source(tmp_path / "empty")
    csv = tmp_path / "index.csv"
    csv.write_text("name\nx.png\n")
    with pytest.raises(SaeVitError, match="no image path column"):
        csv_source(csv)


def test_csv_source_relative_paths(tiny_backbone, image_dir, tmp_path):
    files = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*.png"))
    csv = image_dir / "index.csv"
    csv.write_text("path,label\n" + "".join(f"{f},{i % 2}\n" for i, f in enumerate(files)))
    src = csv_source(csv)
    assert [i.id for i in src.items] == files
    m = write_cache(tiny_backbone, src, tmp_path / "c", [0], tokens="cls")
    assert m["n_tokens"] == len(files)


def test_bf16_forward_stays_close_to_fp32(tiny_backbone, image_dir, tmp_path):
    src = folder_source(image_dir)
    write_cache(tiny_backbone, src, tmp_path / "fp32", [3], dtype="float32")
    write_cache(tiny_backbone, src, tmp_path / "bf16", [3], dtype="float32", precision="bf16")
    a = CacheReader(tmp_path / "fp32").load(3, "all", "all")
    b = CacheReader(tmp_path / "bf16").load(3, "all", "all")
    rel = (a - b).norm() / a.norm()
    assert 0 < rel.item() < 0.05  # bf16 really ran, and stays within 5 % relative error
    with pytest.raises(SaeVitError, match="precision"):
        write_cache(tiny_backbone, src, tmp_path / "x", [3], precision="fp8")
