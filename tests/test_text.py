"""TextHead: toy tower, embeddings file, open_clip hook."""

import sys

import pytest
import torch

from sae_vit.core.errors import SaeVitError
from sae_vit.core.text import TextHead
from sae_vit.world import toyclip


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    torch.manual_seed(0)
    clip = toyclip.ToyClip(toyclip.ToyClipConfig(width=32, heads=2, text_width=32)).eval()
    return toyclip.save_toy_clip(clip, tmp_path_factory.mktemp("toy") / "toy.safetensors")


def test_from_toy_embeds_unit_vectors_and_ensembles_templates(toy_path):
    head = toyclip.toy_text_head(toy_path)
    clip = toyclip.load_toy_clip(toy_path)
    emb = head.embed(["star", "circle"])
    assert emb.shape == (2, 128)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(emb, clip.encode_text(["a photo of a star.", "a photo of a circle."]), atol=1e-5)
    templates = ("a photo of a {}.", "a {} on water.")
    both = head.embed(["star"], templates)
    mean = clip.encode_text(["a photo of a star.", "a star on water."]).mean(0)
    assert torch.allclose(both[0], mean / mean.norm(), atol=1e-5)


def test_zero_shot_logits_are_100_cos(toy_path):
    head = toyclip.toy_text_head(toy_path)
    image_emb = torch.randn(3, 128) * 7
    logits = head.zero_shot_logits(image_emb, ["star", "circle"])
    cos = torch.nn.functional.cosine_similarity(
        image_emb[:, None], head.embed(["star", "circle"])[None], dim=-1
    )
    assert torch.allclose(logits, 100 * cos, atol=1e-3)


def test_file_round_trip(tmp_path):
    emb = torch.randn(3, 16)
    path = TextHead.save_embeddings(tmp_path / "t.safetensors", ["dog", "cat", "bird"], emb)
    head = TextHead.from_file(path)
    out = head.embed(["bird", "dog"])
    assert torch.allclose(out, torch.nn.functional.normalize(emb[[2, 0]], dim=-1), atol=1e-6)
    with pytest.raises(SaeVitError, match="'fish' is not in"):
        head.embed(["fish"])


def test_file_errors(tmp_path):
    with pytest.raises(SaeVitError, match="does not exist"):
        TextHead.from_file(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"embeddings": torch.zeros(2, 4)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SaeVitError, match="'names' JSON list"):
        TextHead.from_file(tmp_path / "bad.safetensors")


def test_open_clip_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    with pytest.raises(SaeVitError, match="pip install"):
        TextHead.from_open_clip("ViT-B-32", "datacomp_xl_s13b_b90k")
