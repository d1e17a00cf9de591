"""Shared fixtures: small random-init timm ViTs saved to local files, and folders of random images.

Nothing here touches the network: models are created with ``pretrained=False`` and loaded back through
the same ``--weights`` code path a user takes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def save_random_vit(name: str, path, seed: int = 0):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """(name, weights file) of timm's 6-block ``test_vit`` (160 px, 100 patches + CLS, width 64)."""
    path = tmp_path_factory.mktemp("models") / "test_vit.safetensors"
    return "test_vit", save_random_vit("test_vit", path)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_vit):
    from sae_vit.core.backbone import load_backbone

    return load_backbone(tiny_vit[0], tiny_vit[1])


def write_images(folder, n: int, seed: int = 0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_dir(tmp_path):
    """A folder of 10 random PNGs in nested sub-folders."""
    folder = tmp_path / "images"
    write_images(folder, 10)
    return folder


@pytest.fixture(autouse=True)
def _isolated_workdir(tmp_path, monkeypatch):
    """Every test gets its own default working folder and the toy model as default."""
    monkeypatch.setenv("SAEVIT_HOME", str(tmp_path / "saevit_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
