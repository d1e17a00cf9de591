"""Dataset readers: real layouts (hand-written fixtures) and world exports round-trip through them."""

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from sae_vit.core.errors import SaeVitError
from sae_vit.io import datasets
from sae_vit.world import scenes as world


def test_waterbirds_export_round_trips(tmp_path):
    out = world.export_task("waterbirds", tmp_path / "wb", n=12, seed=0)
    df = datasets.read_waterbirds(out)
    assert len(df) == 36
    assert set(df.split) == {"train", "val", "test"}
    assert (df.group == 2 * df.label + df.place).all()
    truth = pd.concat([pd.DataFrame(world.task_scenes("waterbirds", s, 12, 0)[1]) for s in world.SPLITS])
    assert list(df.label) == list(truth.y) and list(df.place) == list(truth.place)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df.path)
    assert Image.open(df.path.iloc[0]).size == (64, 64)


def test_celeba_export_round_trips(tmp_path):
    out = world.export_task("celeba", tmp_path / "celeba", n=10, seed=1)
    assert (out / "img_align_celeba").is_dir()
    df = datasets.read_celeba(out, target=world.CELEBA_TARGET, spurious=world.CELEBA_SPURIOUS)
    truth = pd.concat([pd.DataFrame(world.task_scenes("celeba", s, 10, 1)[1]) for s in world.SPLITS])
    assert list(df.label) == list(truth[world.CELEBA_TARGET])
    assert list(df.spurious) == list(truth[world.CELEBA_SPURIOUS])
    assert list(df.split) == list(truth.split)
    for attr in world.CELEBA_ATTRIBUTES:
        assert list(df[attr]) == list(truth[attr])
    assert all(Path(p).is_file() for p in df.path)


@pytest.mark.parametrize("task", ["shapes", "typographic"])
def test_csv_exports_round_trip(tmp_path, task):
    out = world.export_task(task, tmp_path / task, n=6, seed=2)
    df = datasets.read_csv_labels(out / "metadata.csv", "label", group_cols=("background",))
    truth = pd.concat([pd.DataFrame(world.task_scenes(task, s, 6, 2)[1]) for s in world.SPLITS])
    assert list(df.label) == list(truth.label) and list(df.split) == list(truth.split)
    assert all(Path(p).is_file() for p in df.path)
    if task == "typographic":
        typo = datasets.read_typographic(out)
        assert typo.attrs["classes"] == sorted(set(truth.class_name))
        assert list(typo.text) == list(truth.text)
        assert list(typo.label_name) == list(truth.class_name)
        # the same set read from the PAINT-style file names alone
        (out / "metadata.csv").unlink()
        by_name = datasets.read_typographic(out).sort_values("path")
        assert sorted(by_name.text) == sorted(truth.text)
        assert all(n in Path(p).name for n, p in zip(by_name.label_name, by_name.path, strict=True))


def test_export_refuses_to_overwrite(tmp_path):
    world.export_task("shapes", tmp_path, n=1, seed=0)
    with pytest.raises(SaeVitError, match="--overwrite"):
        world.export_task("shapes", tmp_path, n=1, seed=0)
    world.export_task("shapes", tmp_path, n=1, seed=0, overwrite=True)


def test_real_celeba_text_layout(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "list_attr_celeba.txt").write_text(
        "3\n5_o_Clock_Shadow Blond_Hair Male\n000001.jpg -1  1 -1\n000002.jpg -1 -1  1\n000003.jpg  1  1  1\n"
    )
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    df = datasets.read_celeba(tmp_path)
    assert list(df.label) == [1, 0, 1] and list(df.spurious) == [0, 1, 1]
    assert list(df.group) == [2, 1, 3] and list(df.split) == ["train", "val", "test"]
    assert df.path.iloc[0] == str(tmp_path.resolve() / "img_align_celeba" / "000001.jpg")
    with pytest.raises(SaeVitError, match="no attribute 'Smiling'"):
        datasets.read_celeba(tmp_path, target="Smiling")


def test_kaggle_celeba_csv_layout(tmp_path):
    (tmp_path / "img_align_celeba" / "img_align_celeba").mkdir(parents=True)
    (tmp_path / "list_attr_celeba.csv").write_text(
        "image_id,Blond_Hair,Male\n000001.jpg,1,-1\n000002.jpg,-1,1\n"
    )
    (tmp_path / "list_eval_partition.csv").write_text("image_id,partition\n000001.jpg,2\n000002.jpg,0\n")
    df = datasets.read_celeba(tmp_path)
    assert list(df.label) == [1, 0] and list(df.split) == ["test", "train"]
    assert "img_align_celeba/img_align_celeba/000001.jpg" in df.path.iloc[0]


def test_real_waterbirds_layout(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "img_id,img_filename,y,split,place,place_filename\n"
        "1,001.Black_footed_Albatross/a.jpg,1,0,1,/o/ocean/00002187.jpg\n"
        "2,002.Laysan_Albatross/b.jpg,0,2,1,/o/ocean/1.jpg\n"
    )
    df = datasets.read_waterbirds(tmp_path)
    assert list(df.group) == [3, 1] and list(df.split) == ["train", "test"]


def test_generic_csv_string_labels_and_default_split(tmp_path):
    (tmp_path / "index.csv").write_text("path,label,site\na.png,dog,x\nb.png,cat,y\n")
    df = datasets.read_csv_labels(tmp_path / "index.csv", group_cols=("site",))
    assert list(df.label) == [1, 0] and list(df.label_name) == ["dog", "cat"]
    assert list(df.split) == ["test", "test"] and list(df.group) == ["x", "y"]


def test_clear_errors_for_missing_files_and_columns(tmp_path):
    with pytest.raises(SaeVitError, match="metadata.csv not found"):
        datasets.read_waterbirds(tmp_path)
    (tmp_path / "metadata.csv").write_text("img_filename,y\nx.jpg,1\n")
    with pytest.raises(SaeVitError, match="no column 'split'"):
        datasets.read_waterbirds(tmp_path)
    with pytest.raises(SaeVitError, match="no column 'path'"):
        datasets.read_csv_labels(tmp_path / "metadata.csv")
    with pytest.raises(SaeVitError, match="list_attr_celeba"):
        datasets.read_celeba(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SaeVitError, match="label=X_text=Y"):
        datasets.read_typographic(empty)
