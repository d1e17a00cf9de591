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


# -- the Hugging Face Hub, offline -------------------------------------------------------------------------------
#: The commit a laid-out repo's ``refs/main`` points to, unless a test names another.
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1, a private Hub cache (returned; fill it with :func:`lay_out_hub_cache`) and converted-SAE
    cache under ``HF_HOME``, and no network socket may connect (local ones may: DataLoader workers use them)."""
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("SAEVIT_CONVERTED", raising=False)
    connect = socket.socket.connect

    def refuse(sock, address, *args, **kwargs):
        if sock.family == socket.AF_UNIX:
            return connect(sock, address, *args, **kwargs)
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tmp_path / "hf_cache"


def lay_out_hub_cache(cache, repo_id: str, files: dict[str, bytes], commit: str = HUB_COMMIT, ref: str = "main"):
    """Write a repo snapshot exactly as huggingface_hub's cache stores it (``models--owner--repo/{blobs, refs,
    snapshots}``: content-addressed blobs, relative symlinks, ``refs/<ref>`` naming ``commit``); returns the
    snapshot folder."""
    import hashlib
    import os

    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    snap = storage / "snapshots" / commit
    for path, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi's network calls replaced: records the repo and branch it would create and every file (path -> bytes)
    it would upload."""
    import os

    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = (repo_id, kw)
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kw):
        calls["create_branch"] = (repo_id, kw)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        root = os.path.abspath(folder_path)
        calls["files"] = {}
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as fh:
                    calls["files"][os.path.relpath(path, root).replace(os.sep, "/")] = fh.read()
        calls["upload"] = (repo_id, kw)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls
