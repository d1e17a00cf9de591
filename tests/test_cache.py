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

    def flaky(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_save(path, tensors, metadata)

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


# -- reliability: locking, verification, fingerprints, overwrite, image modes (issue 15) ---------------------------
def _small_cache(backbone, images, out, **kw):
    return write_cache(backbone, folder_source(images), out, [1], images_per_shard=4, batch_size=4, **kw)


@pytest.fixture(scope="module")
def finished(tiny_backbone, tmp_path_factory):
    """One small finished cache (10 images, layer 1, 3 shards), built once; tests damage copies of it."""
    from tests.conftest import write_images

    root = tmp_path_factory.mktemp("finished")
    write_images(root / "images", 10)
    _small_cache(tiny_backbone, root / "images", root / "cache")
    return root / "cache"


def _copy(finished, tmp_path):
    import shutil

    return shutil.copytree(finished, tmp_path / "c")


def test_a_second_writer_is_refused_naming_the_first(tiny_backbone, image_dir, tmp_path):
    out = tmp_path / "c"
    with cache_mod.cache_lock(out):
        with pytest.raises(SaeVitError, match=r"being written by another `saevit cache` \(pid \d+ on "):
            _small_cache(tiny_backbone, image_dir, out)
    assert not (out / "manifest.json").exists()
    m = _small_cache(tiny_backbone, image_dir, out)  # the lock is released: the folder is writable again
    assert m["complete"] and not (out / cache_mod.LOCK_OWNER).exists()


def test_train_refuses_an_unfinished_cache_unless_allowed(tiny_backbone, many_images, tmp_path):
    import sae_vit.pipeline as api
    from sae_vit.core.train import TrainConfig

    out = tmp_path / "c"
    write_cache(tiny_backbone, folder_source(many_images), out, [1], images_per_shard=8, stop_after_shards=4)
    cfg = TrainConfig(expansion=1, k=4, batch_size=64, device="cpu")
    with pytest.raises(SaeVitError, match=r"unfinished \(4 of 6 shards\).*--allow-incomplete"):
        api.train(1, "all", out, tmp_path / "sae.safetensors", cfg, n_tokens=128)
    assert not (tmp_path / "sae.safetensors").exists()
    sae, path = api.train(1, "all", out, tmp_path / "sae.safetensors", cfg, n_tokens=128, allow_incomplete=True)
    assert path.is_file() and sae.cfg.d_in == 64


def _rewrite_shard(path, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    tensors.update({k: v for k, v in changes.items() if k != "metadata"})
    meta.update(changes.get("metadata", {}))
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("damage, message", [
    (lambda p: _rewrite_shard(p, acts=load_file(str(p))["acts"].to(torch.int8)), "acts are I8"),
    (lambda p: _rewrite_shard(p, metadata={"site": "mlp_out"}), "records site 'mlp_out'"),
    (lambda p: _rewrite_shard(p, metadata={"source": "0123456789abcdef"}), "records source"),
    (lambda p: _rewrite_shard(p, metadata={"layer": "3"}), "records layer '3'"),
    (lambda p: _rewrite_shard(p, acts=load_file(str(p))["acts"][:-5]), r"acts \[\d+, 64\], expected"),
    (lambda p: _rewrite_shard(p, image_index=load_file(str(p))["image_index"][:7]), "image_index"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is damaged"),
    (lambda p: p.unlink(), "listed in the manifest but missing"),
])
def test_verify_names_a_shard_that_disagrees_with_the_manifest(finished, tmp_path, damage, message):
    out = _copy(finished, tmp_path)
    CacheReader(out).verify()
    damage(cache_mod.shard_path(out, 1, 1))
    with pytest.raises(SaeVitError, match=message):
        CacheReader(out).verify()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(d_model=32), r"acts \[\d+, 64\], expected \[\d+, 32\]"),
    (lambda m: m.pop("layers"), "'layers' is missing"),
    (lambda m: m.update(dtype="int8"), "'dtype' is 'int8'"),
    (lambda m: m.update(d_model=64.0), "'d_model' is 64.0"),
    (lambda m: m["shards"][0].update(n_tokens="many"), "'n_tokens' is 'many'"),
    (lambda m: m["shards"].pop(), "says complete but lists 2 of 3"),
    (lambda m: m["shards"][1].update(index=0), "shard indices"),
])
def test_a_damaged_manifest_is_one_line(finished, tmp_path, edit, message):
    out = _copy(finished, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SaeVitError, match=message):
        CacheReader(out).verify()


def test_fingerprint_sees_a_replaced_image_of_the_same_size(tiny_backbone, image_dir, tmp_path):
    first = folder_source(image_dir).fingerprint()
    victim = sorted(image_dir.rglob("*.png"))[3]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    victim.write_bytes(bytes(data))
    assert folder_source(image_dir).fingerprint() != first
    out = tmp_path / "c"
    _small_cache(tiny_backbone, image_dir, out, stop_after_shards=1)
    victim.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(SaeVitError, match="other settings"):
        _small_cache(tiny_backbone, image_dir, out)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_never_touches_a_users_files(tiny_backbone, image_dir, tmp_path):
    out = tmp_path / "c"
    _small_cache(tiny_backbone, image_dir, out)
    (tmp_path / "next_to.txt").write_text("mine")
    for name in ("thesis.tex", "layer_notes/my_shard_plan.txt", "layer_1/notes.txt"):
        user = out / name
        user.parent.mkdir(parents=True, exist_ok=True)
        user.write_text(f"user file {name}")
        before = _tree(tmp_path)
        with pytest.raises(SaeVitError, match=f"holds {user}.*did not write"):
            write_cache(tiny_backbone, folder_source(image_dir), out, [2], images_per_shard=4, overwrite=True)
        assert _tree(tmp_path) == before  # nothing changed, the user's file included
        user.unlink()
        if user.parent != out and user.parent.name != "layer_1":
            user.parent.rmdir()
    m = write_cache(tiny_backbone, folder_source(image_dir), out, [2], images_per_shard=4, overwrite=True)
    assert m["layers"] == [2] and (tmp_path / "next_to.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [".saevit.lock", "layer_2", "manifest.json"]


def test_a_decompression_bomb_is_skipped_with_its_reason(tiny_backbone, image_dir, tmp_path):
    from PIL import Image

    Image.new("1", (20000, 20000)).save(image_dir / "bomb.png")  # a few KB that decode to 400 M pixels
    m = _small_cache(tiny_backbone, image_dir, tmp_path / "c")
    assert m["complete"] and m["skipped"] == ["bomb.png"] and m["n_images_cached"] == 10
    assert m["skip_reasons"]["bomb.png"].startswith("DecompressionBombError")
    again = _small_cache(tiny_backbone, image_dir, tmp_path / "c2")  # and again: no crash on a re-run either
    assert again["skipped"] == ["bomb.png"]


def _modes(tmp_path):
    """(file, reference RGB uint8 array) per image mode, the reference computed with numpy from the raw data."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    cases = {}
    g16 = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    cases["I;16 png"] = ("g16.png", np.repeat(np.rint(g16 / 257.0)[..., None], 3, -1))
    fl = rng.random((12, 10), dtype=np.float32)
    Image.fromarray(fl).save(tmp_path / "f.tiff")
    cases["F tiff in [0, 1]"] = ("f.tiff", np.repeat(np.rint(fl.astype(np.float64) * 255)[..., None], 3, -1))
    fl2 = (rng.random((12, 10)) * 400 - 50).astype(np.float32)
    Image.fromarray(fl2).save(tmp_path / "f2.tiff")
    cases["F tiff beyond [0, 1]"] = ("f2.tiff", np.repeat(np.clip(np.rint(fl2.astype(np.float64)), 0, 255)[..., None],
                                                          3, -1))
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    a = alpha[..., None] / 255.0
    cases["RGBA"] = ("rgba.png", np.rint(rgb * a + 255 * (1 - a)))
    grey = rgb[..., 0]
    Image.fromarray(np.dstack([grey, alpha])).convert("LA").save(tmp_path / "la.png")
    cases["LA"] = ("la.png", np.repeat(np.rint(grey * a[..., 0] + 255 * (1 - a[..., 0]))[..., None], 3, -1))
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    idx = rng.integers(0, 4, (12, 10), dtype=np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(palette.flatten().tolist())
    p.save(tmp_path / "p.png", transparency=2)  # colour 2 is transparent
    ref = palette[idx].astype(np.float64)
    ref[idx == 2] = 255
    cases["P with transparency"] = ("p.png", ref)
    cmyk = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.tiff")
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    cases["CMYK"] = ("cmyk.tiff", (255 - c) * (255 - k) / 255)
    return cases


@pytest.mark.parametrize("mode", ["I;16 png", "F tiff in [0, 1]", "F tiff beyond [0, 1]", "RGBA", "LA",
                                  "P with transparency", "CMYK"])
def test_image_modes_convert_like_a_reference(tmp_path, mode):
    import numpy as np

    from sae_vit.io.images import ImageItem

    name, ref = _modes(tmp_path)[mode]
    got = np.asarray(ImageItem(name, tmp_path / name).open(), dtype=np.float64)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1.0, mode  # rounding only


def test_bf16_forward_into_a_float16_cache(tiny_backbone, image_dir, tmp_path):
    """The documented combination --precision bf16 with the default --dtype float16 (crashed in autocast)."""
    m = write_cache(tiny_backbone, folder_source(image_dir), tmp_path / "c", [3], precision="bf16")
    assert m["complete"] and CacheReader(tmp_path / "c").load(3, "all", "all").isfinite().all()
