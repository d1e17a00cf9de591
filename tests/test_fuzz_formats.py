"""Fuzzed checkpoint metadata and cache manifests: whatever a file holds, reading it either works or raises one
:class:`SaeVitError` (the CLI's one red line), never another exception (issue 15)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import METADATA_KEY, SAE, SAEConfig, read_checkpoint
from sae_vit.io.cache import MANIFEST, CacheReader, _refresh_totals, _save_shard, read_manifest, shard_path

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD_META = {"format_version": 1, "d_in": 8, "d_sae": 16, "architecture": "topk", "k": 4, "l1_coefficient": None,
             "normalization": "none", "model": "toy", "layer": 2, "site": "resid_post", "tokens": "cls",
             "training": {}}
#: Values a field could plausibly be given by mistake, beside arbitrary JSON.
NEAR = st.sampled_from([0, -1, 1, 4, 8, 16, 17, 8.0, 4.5, True, False, None, "", "8", "topk", "relu", "layer_norm",
                        "constant", "cls", "patches", "all", "mlp_out", "foo", [], {}, float("nan"), 1e300])


def _valid_tensors():
    sae = SAE(SAEConfig(d_in=8, d_sae=16, k=4))
    return {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}


TENSORS = _valid_tensors()


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(GOOD_META)), NEAR | JSON, max_size=4),
       drop=st.sets(st.sampled_from(sorted(GOOD_META)), max_size=2), whole=st.none() | JSON)
def test_fuzzed_checkpoint_metadata_loads_or_is_one_sae_vit_error(changes, drop, whole):
    meta = {k: v for k, v in {**GOOD_META, **changes}.items() if k not in drop}
    if whole is not None and not isinstance(whole, dict):
        meta = whole
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sae.safetensors"
        save_file(TENSORS, str(path), metadata={METADATA_KEY: json.dumps(meta)})
        try:
            cfg, tensors = read_checkpoint(path)
        except SaeVitError as exc:
            assert "\n" not in str(exc)
            return
        sae = SAE.from_tensors(cfg, tensors)  # what loads, works
        x_hat, f = sae(torch.randn(3, cfg.d_in))
        assert torch.isfinite(x_hat).all()


def _write_cache(root: Path) -> dict:
    """A 3-shard cache of random activations (layers 0 and 1, d_model 8, 2 tokens per image, 4 images a shard)."""
    manifest = {"format_version": 1, "model": "toy", "weights": "w", "layers": [0, 1], "site": "resid_post",
                "tokens": "all", "dtype": "float16", "d_model": 8, "has_cls": True, "n_patches": 1,
                "tokens_per_image": 2, "images_per_shard": 4, "n_images": 10,
                "source": {"kind": "folder", "fingerprint": "f"}, "shards": [], "complete": True}
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate((4, 4, 2)):
        img = torch.arange(4 * i, 4 * i + n).repeat_interleave(2)
        tok = torch.arange(2).repeat(n)
        for layer in (0, 1):
            _save_shard(shard_path(root, layer, i), {"acts": torch.randn(2 * n, 8, generator=g).half(),
                                                     "image_index": img, "token_index": tok})
        manifest["shards"].append({"index": i, "n_images": n, "n_tokens": 2 * n,
                                   "norm_sum": {"0": 1.0, "1": 1.0}, "skipped": []})
    _refresh_totals(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))
    return manifest


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_cache")
    return root, _write_cache(root)


SHARD_KEYS = ["index", "n_images", "n_tokens", "norm_sum", "skipped"]


@FUZZ
@given(data=st.data())
def test_fuzzed_cache_manifest_reads_or_is_one_sae_vit_error(base_cache, data):
    root, good = base_cache
    manifest = json.loads(json.dumps(good))
    for key, value in data.draw(st.dictionaries(st.sampled_from(sorted(good)), NEAR | JSON, max_size=3)).items():
        manifest[key] = value
    for key in data.draw(st.sets(st.sampled_from(sorted(good)), max_size=2)):
        manifest.pop(key, None)
    if isinstance(manifest.get("shards"), list) and manifest["shards"] and data.draw(st.booleans()):
        shard = manifest["shards"][data.draw(st.integers(0, len(manifest["shards"]) - 1))]
        if isinstance(shard, dict):
            shard[data.draw(st.sampled_from(SHARD_KEYS))] = data.draw(NEAR | JSON)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for layer in (0, 1):
            (tmp / f"layer_{layer}").symlink_to(root / f"layer_{layer}", target_is_directory=True)
        (tmp / MANIFEST).write_text(json.dumps(manifest, allow_nan=True))
        try:
            read_manifest(tmp)
            reader = CacheReader(tmp)
            reader.verify(allow_incomplete=True)
            for layer in reader.layers:
                reader.check(layer, "cls")
                x = reader.load(layer, "cls", "all", max_tokens=5)
                assert x.shape[1] == reader.d_model and not math.isnan(float(x.sum()))
                assert reader.count(layer, "patches", "all") >= 0
        except SaeVitError as exc:
            assert "\n" not in str(exc)
        finally:
            shutil.rmtree(tmp / "layer_0", ignore_errors=True)
