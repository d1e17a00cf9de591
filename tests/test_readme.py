"""README.md's Python snippet runs as written (in a fresh folder, on the toy CLIP, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    # what the snippet's comments promise
    assert namespace["x"].shape == (8, 1, 64) and namespace["f"].shape == (8, 1, 256)
    assert namespace["embedding"].shape == (8, 128)
    assert (tmp_path / "runs" / "cache" / "manifest.json").is_file()
    assert (tmp_path / "runs" / "layer_8_cls.safetensors").is_file()
    # the edit went through the forward pass: latent 12 fired on some image, or the output is unchanged
    fired = bool((namespace["f"][..., 12] > 0).any())
    with torch.no_grad():
        plain = namespace["backbone"].image_embedding(namespace["images"])
    assert fired != torch.allclose(plain, namespace["embedding"], atol=1e-6)
