"""The toy CLIP: architecture interface, save/load, a few training steps (toyclip_train), and the shipped weights."""

import dataclasses

import pytest
import torch

from sae_vit.core.errors import SaeVitError
from sae_vit.world import scenes as world
from sae_vit.world import toyclip, toyclip_train

torch.set_num_threads(2)


def test_build_toy_vit_interface():
    import timm.data

    model = toyclip.build_toy_vit()
    assert len(model.blocks) == 12 and model.embed_dim == toyclip.ToyClipConfig().width
    assert model.patch_embed.num_patches == 64 and model.cls_token is not None
    assert model.head.bias is None and model.global_pool == "token"
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 64, 64) and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == toyclip.CLIP_MEAN and cfg["std"] == toyclip.CLIP_STD
    x = torch.zeros(2, 3, 64, 64)
    assert model(x).shape == (2, 128)
    assert model.forward_features(x).shape == (2, 65, model.embed_dim)


def test_preprocess_matches_timm_transform():
    import numpy as np
    import timm.data

    model = toyclip.build_toy_vit()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    img = world.render(world.sample(1, 0)[0])
    ours = toyclip.preprocess(np.asarray(img)[None])[0]
    assert torch.allclose(ours, transform(img), atol=1e-5)


def test_tokenizer_and_text_encoding():
    clip = toyclip.ToyClip()
    tokens = clip.tokenize(["a photo of a star.", "zebra"])
    assert tokens.shape == (2, clip.config.context)
    assert tokens[1, 0] == clip.tokenize.ids["<unk>"] and tokens[1, 1] == clip.tokenize.ids["<eot>"]
    emb = clip.encode_text(["a photo of a star.", "a red circle on water."])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_contrastive_loss_treats_identical_captions_as_positives():
    clip = toyclip.ToyClip()
    text = torch.nn.functional.normalize(clip.text(clip.tokenize(["a star.", "a circle."])), dim=-1)
    clip.logit_scale.data.fill_(torch.log(torch.tensor(100.0)))
    # images exactly at their caption's embedding: duplicates must not count as negatives
    perfect = toyclip_train.contrastive_loss(text[[0, 0, 1]] * 5, ["a star.", "a star.", "a circle."], clip)
    wrong = toyclip_train.contrastive_loss(text[[1, 1, 0]] * 5, ["a star.", "a star.", "a circle."], clip)
    assert perfect < 0.75 < wrong  # log(2) is the floor of the caption→image term with two positives


def test_a_few_training_steps_reduce_the_loss():
    recipe = dataclasses.replace(
        toyclip_train.TrainRecipe(), steps=40, batch_size=32, workers=0, lr=3e-3, warmup=0.1
    )
    small = toyclip.ToyClipConfig(width=32, heads=2, text_width=32)
    images, captions, _ = next(iter(toyclip_train._CaptionedImages(seed=99, batch_size=64, mix=recipe.mix)))

    @torch.no_grad()
    def held_out_loss(clip):
        return toyclip_train.contrastive_loss(clip.image(toyclip.preprocess(images)), captions, clip).item()

    torch.manual_seed(recipe.seed)  # train_toy_clip starts from this same initialisation
    before = held_out_loss(toyclip.ToyClip(small).eval())
    curve = []
    clip = toyclip_train.train_toy_clip(recipe, small, progress=curve.append, eval_n=0)
    assert clip.metadata["steps"] == 40 and not clip.training
    assert [p["step"] for p in curve] == [1, 20, 40]
    assert held_out_loss(clip) < before - 0.05


def test_save_load_round_trip(tmp_path):
    clip = toyclip.ToyClip(toyclip.ToyClipConfig(width=32, heads=2, text_width=32)).eval()
    clip.metadata = {"recipe": {"seed": 0}, "accuracies": {"shapes": 0.5}}
    path = toyclip.save_toy_clip(clip, tmp_path / "c.safetensors")
    with pytest.raises(SaeVitError, match="--overwrite"):
        toyclip.save_toy_clip(clip, path)
    loaded = toyclip.load_toy_clip(path)
    assert loaded.vocab == clip.vocab and loaded.metadata["accuracies"] == {"shapes": 0.5}
    x = torch.randn(2, 3, 64, 64)
    # stored as float16: equal up to half precision
    assert torch.allclose(loaded.image(x), clip.image(x), atol=2e-2)
    assert torch.allclose(loaded.encode_text(["a star."]), clip.encode_text(["a star."]), atol=2e-2)


def test_missing_or_foreign_weights_are_user_errors(tmp_path):
    with pytest.raises(SaeVitError, match="saevit world train-clip"):
        toyclip.load_toy_clip(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(SaeVitError, match="not a toy CLIP file"):
        toyclip.load_toy_clip(tmp_path / "foreign.safetensors")


shipped = pytest.mark.skipif(not toyclip.default_path().is_file(), reason="no shipped toy CLIP weights")


@shipped
def test_shipped_weights_load_and_fit_the_budget():
    assert toyclip.default_path().stat().st_size <= 10 * 2**20
    clip = toyclip.load_toy_clip()
    assert len(clip.image.blocks) == 12 and not clip.image.training
    assert set(world.VOCAB) <= set(clip.vocab)
    assert {"recipe", "accuracies", "train_seconds"} <= set(clip.metadata)


@pytest.fixture(scope="module")
def shipped_accuracies():
    """Zero-shot on fresh held-out images (a seed never used for training or for the model card)."""
    return toyclip.evaluate(toyclip.load_toy_clip(), n=300, seed=424242)


@shipped
def test_shipped_toy_clip_meets_the_acceptance_targets(shipped_accuracies):
    acc = shipped_accuracies
    assert acc["shapes"] >= 0.90
    assert acc["typographic"] < 0.50  # it reads: the written word beats the drawn shape
    assert acc["colour"] >= 0.90
    assert acc["background"] >= 0.70  # about 80 %: above chance (33 %), not a target (TOY_CLIP.md)
    # the spurious correlation is real (worst group 15+ points below average) and recoverable (above 10 %)
    assert acc["waterbirds_worst"] <= acc["waterbirds"] - 0.15
    assert acc["waterbirds_worst"] > 0.10


@pytest.mark.slow
def test_train_clip_reproduces_the_shipped_quality(tmp_path):
    """The full recipe (about 25 minutes on 2 cores) reproduces weights of the shipped quality."""
    clip = toyclip_train.train_toy_clip(toyclip_train.TrainRecipe(), eval_n=0)
    acc = toyclip.evaluate(clip, n=600, seed=515151)
    assert acc["shapes"] >= 0.85 and acc["typographic"] < 0.5
    assert acc["waterbirds_worst"] <= acc["waterbirds"] - 0.10
