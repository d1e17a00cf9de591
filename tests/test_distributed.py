"""Caching under torchrun (gloo, 2 CPU processes) gives the same cache as a single process."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from sae_vit.io.cache import read_manifest, write_cache
from sae_vit.io.images import folder_source
from tests.conftest import write_images


def test_torchrun_cache_equals_single_process(tiny_backbone, tiny_vit, tmp_path):
    images = tmp_path / "imgs"
    write_images(images, 21, seed=3)
    single = tmp_path / "single"
    write_cache(tiny_backbone, folder_source(images), single, [1, 3], images_per_shard=4, batch_size=4)

    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sae_vit.cli", "cache", "--images", str(images), "--model", tiny_vit[0], "--weights",
           str(tiny_vit[1]), "--layers", "1,3", "--out", str(multi), "--images-per-shard", "4", "--batch-size", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=None)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = read_manifest(single), read_manifest(multi)
    assert b["complete"] and not list(multi.glob("manifest.rank*.json"))
    for key in ("n_tokens", "n_images_cached", "shards", "layers"):
        assert a[key] == b[key], key
    for layer in (1, 3):
        files = sorted(p.name for p in (single / f"layer_{layer}").iterdir())
        assert files == sorted(p.name for p in (multi / f"layer_{layer}").iterdir())
        for name in files:
            ta, tb = load_file(str(single / f"layer_{layer}" / name)), load_file(str(multi / f"layer_{layer}" / name))
            for key in ta:
                torch.testing.assert_close(ta[key], tb[key], atol=1e-3, rtol=1e-3)
