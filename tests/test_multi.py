"""Many SAEs from one pass over a cache: every stream sees its tokens once per epoch, and each SAE trains."""

import pytest
import torch

import sae_vit.pipeline as api
from sae_vit.core.sae import SAE
from sae_vit.core.train import TrainConfig
from sae_vit.io.cache import CacheReader, count_tokens, joint_batches, write_cache
from sae_vit.io.images import folder_source
from sae_vit.pipeline import train_grid
from sae_vit.pipeline.training import REPLACE_STALE, Job, train_many
from tests.conftest import write_images


@pytest.fixture(scope="module")
def cache_dir(tiny_backbone, tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    write_images(root / "imgs", 40, seed=5)
    out = root / "cache"
    write_cache(tiny_backbone, folder_source(root / "imgs"), out, [1, 3], images_per_shard=8, batch_size=8)
    return out


def test_joint_batches_cover_each_stream_once_per_epoch(cache_dir):
    reader = CacheReader(cache_dir)
    keys = [(1, "cls"), (1, "patches"), (3, "all")]
    counts = count_tokens(reader, keys)
    assert counts == {k: reader.count(*k, "train") for k in keys}
    seen = {k: [] for k in keys}
    for key, batch in joint_batches(reader, counts, {k: 64 for k in keys}, seed=1):
        assert len(batch) <= 64
        seen[key].append(batch)
    for key in keys:
        got = torch.cat(seen[key])
        ref = reader.load(*key, "train")
        assert len(got) == len(ref) == counts[key]
        # The same multiset of rows: compare after sorting by a fixed projection.
        proj = torch.randn(ref.shape[1], generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got[(got @ proj).argsort()], ref[(ref @ proj).argsort()])


def test_train_many_trains_every_job(cache_dir, tmp_path):
    cfg = TrainConfig(expansion=2, k=8, batch_size=128, lr=4e-3, warmup_steps=5, device="cpu", dtype="fp32")
    jobs = [Job(layer, tokens, cfg, tmp_path / f"{layer}_{tokens}.safetensors")
            for layer in (1, 3) for tokens in ("cls", "patches")]
    jobs.append(Job(3, "patches", TrainConfig(**{**cfg.__dict__, "k": 4}), tmp_path / "3_patches_k4.safetensors"))
    calls = []
    results = train_many(cache_dir, jobs, n_tokens=3000, progress=lambda i, s: calls.append(i))
    assert sorted(set(calls)) == list(range(len(jobs)))
    for job, (_sae, path) in zip(jobs, results, strict=True):
        loaded = SAE.load(path)
        assert (loaded.cfg.layer, loaded.cfg.tokens) == (job.layer, job.tokens)
        assert loaded.cfg.k == job.config.k
        t = loaded.cfg.training
        assert t["tokens_seen"] == 3000 and t["eval_tokens"] > 0
        if job.tokens == "patches":  # the CLS streams hold 2 held-out tokens: no meaningful FVU
            assert 0 < t["fvu"] < 0.9, (job, t["fvu"])


def test_replace_stale_keeps_the_same_recipe_and_retrains_another(cache_dir, tmp_path):
    """``overwrite=REPLACE_STALE`` (make-assets' work folder): the same recipe on the same cache is kept (``kept``
    is told), another recipe is retrained in place instead of refused."""
    cfg = TrainConfig(expansion=2, k=8, batch_size=128, lr=4e-3, warmup_steps=5, device="cpu", dtype="fp32")
    out = tmp_path / "sae.safetensors"
    train_many(cache_dir, [Job(3, "patches", cfg, out)], n_tokens=1000)
    before, kept = out.read_bytes(), []
    train_many(cache_dir, [Job(3, "patches", cfg, out)], n_tokens=1000, overwrite=REPLACE_STALE, kept=kept.append)
    assert kept == [out] and out.read_bytes() == before
    other = TrainConfig(**{**cfg.__dict__, "k": 4})
    train_many(cache_dir, [Job(3, "patches", other, out)], n_tokens=1000, overwrite=REPLACE_STALE, kept=kept.append)
    assert kept == [out] and SAE.load(out).cfg.k == 4


def test_api_train_several_layers_and_token_types(cache_dir, tmp_path):
    cfg = TrainConfig(expansion=2, k=8, batch_size=128, device="cpu")
    results = api.train([1, 3], ["cls", "all"], cache_dir, tmp_path / "saes", cfg, n_tokens=1000)
    assert [(s.cfg.layer, s.cfg.tokens) for s, _ in results] == [(1, "cls"), (1, "all"), (3, "cls"), (3, "all")]
    assert all(p.is_file() and p.parent.parent.name.startswith("layer_") for _, p in results)


def test_sparsity_grid_trains_missing_ones_in_one_pass(cache_dir, tmp_path):
    cfg = TrainConfig(expansion=2, k=8, batch_size=128, device="cpu")
    paths = train_grid(cache_dir, [1, 3], ["cls"], 1000, config=cfg, sae_dir=tmp_path)
    assert all(p.is_file() for p in paths) and len(paths) == 2
    stamp = [p.stat().st_mtime_ns for p in paths]
    assert train_grid(cache_dir, [1, 3], ["cls"], 1000, config=cfg, sae_dir=tmp_path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamp  # nothing retrained
