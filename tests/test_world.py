"""The synthetic world: determinism, speed, content of captions and task splits."""

import time

import numpy as np
import pytest

from sae_vit.core.errors import SaeVitError
from sae_vit.world import scenes as world


def test_sample_is_deterministic_from_seed():
    a = world.sample(20, seed=3, p_word=0.5)
    b = world.sample(20, seed=3, p_word=0.5)
    c = world.sample(20, seed=4, p_word=0.5)
    assert a == b
    assert [s.caption for s in a] == [s.caption for s in b]
    assert a != c
    for s, t in zip(a, b, strict=True):
        assert np.array_equal(world.render_array(s), world.render_array(t))


def test_training_scenes_are_deterministic_and_varied():
    a = world.training_scenes(300, seed=0)
    assert a == world.training_scenes(300, seed=0)
    assert {s.shape for s in a} >= set(world.OBJECTS) | {None}
    assert {s.background for s in a} == set(world.BACKGROUNDS)
    assert any(s.word is not None for s in a)
    assert any(s.caption.startswith("a photo of a ") for s in a)


def test_render_shape_and_dtype():
    scene = world.sample(1, seed=0, shapes=("star",), backgrounds=("water",), p_word=1.0)[0]
    arr = world.render_array(scene)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    img = world.render(scene)
    assert img.size == (64, 64) and img.mode == "RGB"


def test_constraints_and_captions_mention_content():
    scenes = world.sample(
        50, seed=1, shapes=("heart",), colours=("red",), backgrounds=("land",), p_word=1.0, words=("circle",)
    )
    for s in scenes:
        assert (s.shape, s.colour, s.background, s.word) == ("heart", "red", "land", "circle")
        assert "heart" in s.caption and "circle" in s.caption


def test_word_changes_pixels_and_written_caption():
    scene = world.sample(1, seed=5, shapes=("square",))[0]
    with_word = world.sample(1, seed=5, shapes=("square",), p_word=1.0, words=("star",))[0]
    assert "with the word 'star' written on it" in with_word.caption
    assert not np.array_equal(world.render_array(scene), world.render_array(with_word))


def test_water_and_land_differ_in_texture_not_only_colour():
    def texture(bg):
        arr = [world.render_array(s).astype(float).mean(2) for s in world.sample(30, 0, backgrounds=(bg,))]
        # vertical vs horizontal gradient energy: water has horizontal waves (rows), land is isotropic
        dy = np.mean([np.abs(np.diff(a, axis=0)).mean() for a in arr])
        dx = np.mean([np.abs(np.diff(a, axis=1)).mean() for a in arr])
        return dy / dx

    assert texture("water") > 1.5 * texture("land")


def test_unknown_names_raise_user_errors():
    with pytest.raises(SaeVitError, match="Unknown shape"):
        world.sample(1, 0, shapes=("blob",))
    with pytest.raises(SaeVitError, match="Unknown world task"):
        world.make_task("imagenet", "test", 2, 0)


def test_rendering_is_fast():
    scenes = world.training_scenes(500, seed=0)
    world.render_array(scenes[0])  # font warm-up
    start = time.perf_counter()
    for s in scenes:
        world.render_array(s)
    # thousands per second on an idle core; the bound leaves room for a busy shared machine
    assert 500 / (time.perf_counter() - start) > 200


def test_typographic_is_shapes_with_a_different_word():
    shapes, _ = world.task_scenes("shapes", "test", 40, seed=7)
    typo, rows = world.task_scenes("typographic", "test", 40, seed=7)
    for s, t, r in zip(shapes, typo, rows, strict=True):
        assert s.shape == t.shape and s.position == t.position and s.texture_seed == t.texture_seed
        assert t.word in world.SHAPES and t.word != t.shape
        assert r["text"] == t.word and r["label"] == world.SHAPES.index(t.shape)
        assert s.word is None


def test_waterbirds_correlation_per_split():
    train, _ = world.make_task("waterbirds", "train", 2000, seed=0)
    test, _ = world.make_task("waterbirds", "test", 2000, seed=0)
    agree = lambda df: (df.y == df.place).mean()  # noqa: E731
    assert 0.93 < agree(train) < 0.97
    assert 0.45 < agree(test) < 0.55
    assert set(test.group) == {0, 1, 2, 3}
    assert set(test["shape"]) == set(world.VEHICLES)


def test_celeba_confound_only_in_train():
    train, _ = world.make_task("celeba", "train", 2000, seed=0)
    test, images = world.make_task("celeba", "test", 2000, seed=0)
    corr = lambda df: np.corrcoef(df[world.CELEBA_TARGET], df[world.CELEBA_SPURIOUS])[0, 1]  # noqa: E731
    assert corr(train) > 0.7
    assert abs(corr(test)) < 0.1
    assert set(world.CELEBA_ATTRIBUTES) <= set(test.columns)
    assert len(images) == 2000


def test_splits_and_seeds_give_different_images():
    a = world.task_scenes("shapes", "test", 5, seed=0)[0]
    b = world.task_scenes("shapes", "train", 5, seed=0)[0]
    c = world.task_scenes("shapes", "test", 5, seed=1)[0]
    assert a != b and a != c


def test_world_images_ids_and_images():
    pairs = world.world_images("waterbirds", "test", n=4, seed=0)
    assert [i for i, _ in pairs] == [f"waterbirds_test_{k:06d}" for k in range(4)]
    assert all(img.size == (64, 64) for _, img in pairs)


def test_sample_grid():
    grid = world.sample_grid(world.sample(10, 0), columns=5, scale=1)
    assert grid.size == (5 * 64, 2 * 64)


def test_concept_prompts_name_the_concept_as_a_scene_property():
    red = world.concept_prompts("red")
    assert len(red) == len(world.SHAPES) and all("red" in p and p != "red" for p in red)
    assert world.concept_prompts("water")[0].endswith(" on water.")
    assert world.concept_prompts("star") == ["a photo of a star."]
    assert world.concept_prompts("with") == ["with"]  # not a concept: left as it is
