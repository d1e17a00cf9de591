"""defend-typo: attack rendering, discovery, the one-edit defence, the protocol and the CLI spellings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sae_vit.analysis import typo
from sae_vit.analysis.typo import attacks as typo_attacks
from sae_vit.cli import app
from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.core.text import TextHead

NAMES = ["cat", "dog", "bird", "circle", "star", "square", "triangle", "cross", "heart"]


def _embed_dim(backbone) -> int:
    with torch.no_grad():
        return backbone.image_embedding(torch.zeros(1, 3, 160, 160)).shape[-1]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, tiny_backbone):
    path = tmp_path_factory.mktemp("text") / "emb.safetensors"
    g = torch.Generator().manual_seed(0)
    TextHead.save_embeddings(path, NAMES, torch.randn(len(NAMES), _embed_dim(tiny_backbone), generator=g))
    return path


@pytest.fixture(scope="module")
def bundle(tiny_backbone, text_file):
    return typo.ModelBundle(tiny_backbone, TextHead.from_file(text_file), "tiny test_vit")


def _sae(layer: int = 2, d_sae: int = 256, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=64, d_sae=d_sae, k=16, layer=layer, model="test_vit"))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    return sae


# ------------------------------------------------------------------------------------------ attacks


def test_attack_recipe_colours_fit_and_control_placement():
    rng = np.random.default_rng(0)
    base = Image.new("RGB", (90, 60), (120, 130, 140))
    for _ in range(30):
        att, ctrl, pl = typo.render_attack(base, "triangle", rng, typo.AttackConfig(), control="bopomaki")
        assert att.size == ctrl.size == (60, 60)  # centre-cropped square
        assert pl.fill != pl.stroke
        font = typo_attacks._font(None, pl.size)
        x0, y0, x1, y1 = font.getbbox("triangle", stroke_width=pl.stroke_width)
        assert 0 <= pl.xy[0] + x0 and pl.xy[0] + x1 <= 60 and 0 <= pl.xy[1] + y0 and pl.xy[1] + y1 <= 60
        a, c = np.asarray(att, int), np.asarray(ctrl, int)
        assert (a != 120).any() and (a != c).any()
    # deterministic in the seed
    one = typo.render_attack(base, "star", np.random.default_rng(3))[0]
    two = typo.render_attack(base, "star", np.random.default_rng(3))[0]
    assert np.array_equal(np.asarray(one), np.asarray(two))


def test_attack_config_errors():
    with pytest.raises(typo.SaeVitError, match="palette"):
        typo.AttackConfig(palette=("white", "pink")).validate()
    with pytest.raises(typo.SaeVitError, match="two colours"):
        typo.AttackConfig(palette=("white",)).validate()
    with pytest.raises(typo.SaeVitError, match="position"):
        typo.AttackConfig(position="left").validate()
    assert typo.pseudo_word(6, np.random.default_rng(0), avoid=["circle"]) != "circle"
    assert len(typo.pseudo_word(6, np.random.default_rng(0))) == 6


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK", "I;16"])
def test_to_rgb_any_mode(mode):
    im = Image.new("RGBA", (33, 17), (10, 200, 30, 0)).convert(mode) if mode != "I;16" else Image.new("I;16", (5, 7))
    out = typo.to_rgb(im)
    assert out.mode == "RGB" and out.size == im.size
    if mode == "RGBA":
        assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black


# ------------------------------------------------------------------------------------------ defence


def test_zero_features_equals_undefended(tiny_backbone):
    x = torch.randn(4, 3, 160, 160)
    sae = _sae()
    base = typo.embed_images(tiny_backbone, x)
    none = typo.embed_images(tiny_backbone, x, typo.SaeDefence(sae, []))
    assert torch.allclose(none, base, atol=1e-5, rtol=0)
    assert torch.equal(typo.embed_images(tiny_backbone, x, typo.HeadDefence([])), base)
    changed = typo.embed_images(tiny_backbone, x, typo.SaeDefence(sae, range(64)))
    assert (changed - base).abs().max() > 1e-4
    # the defence is a splice edit: outside the context the model is untouched
    assert torch.equal(typo.embed_images(tiny_backbone, x), base)


def test_rank_text_features_finds_planted_feature():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(200, 50, generator=g)
    text = clean + 0.05 * torch.randn(200, 50, generator=g)
    text[:, 7] += 1.0
    text[:, 3] += 0.3
    order, scores = typo.rank_text_features(clean, text)
    assert order[:2].tolist() == [7, 3] and scores[0] > scores[1] > 0


def test_world_eval_protocol_and_feature_file(bundle, tmp_path):
    saes = [(tmp_path / f"l{layer}.safetensors", _sae(layer, seed=layer)) for layer in (1, 3)]
    for p, s in saes:
        s.save(p)
    cfg = typo.EvalConfig(n_discovery=8, n_val=8, n_test=8, ns=(0, 2, 8), head_counts=(0, 1),
                          prompt_strengths=(0.5,), test_sets=("shifted",))
    report = typo.run_world_eval(bundle, saes, cfg)
    assert {r["layer"] for r in report.sweep} == {1, 3} and {r["n"] for r in report.sweep} == {0, 2, 8}
    assert set(report.results) == {"test (shifted recipe)"}
    for rows in report.results.values():
        assert set(rows) == {"none", "sae", "heads", "prompt (class)", "prompt (oracle word)", "probe"}
        for m in rows.values():
            assert 0 <= m.clean <= 1 and 0 <= m.asr <= 1 and m.n_images == 8
    chosen = next(s for p, s in saes if str(p) == report.sae_path)
    path = typo.write_report_features(report, chosen, None, cfg)
    assert path == typo.features_path_for(report.sae_path)
    obj = typo.load_features(path, chosen, report.sae_path)
    assert obj["layer"] == report.layer and obj["n_selected"] == report.n
    assert obj["discovery"]["split"] == "train" and obj["selection"]["split"] == "val"
    with pytest.raises(typo.SaeVitError, match="already exists"):
        typo.write_report_features(report, chosen, None, cfg)
    other = next(s for p, s in saes if str(p) != report.sae_path)
    with pytest.raises(typo.SaeVitError, match="another SAE"):
        typo.load_features(path, other)


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli_files(tmp_path, tiny_vit, text_file):
    sae = _sae(2)
    sae_path = sae.save(tmp_path / "sae.safetensors")
    feats = [{"index": i, "score": 1.0} for i in range(8)]
    feat_path = typo.save_features(tmp_path / "sae.typo.json", sae_path, sae, feats, 4, {"split": "train"})
    common = ["--sae", str(sae_path), "--features", str(feat_path), "--model", tiny_vit[0], "--weights",
              str(tiny_vit[1]), "--text-embeddings", str(text_file)]
    return common


def _run(args):
    return CliRunner().invoke(app, args)


def test_cli_classify_any_mode_and_size(tmp_path, cli_files):
    paths = []
    for i, (mode, size) in enumerate([("RGBA", (300, 120)), ("L", (31, 47)), ("P", (64, 64)), ("RGB", (500, 500))]):
        im = Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        p = tmp_path / f"im{i}.{'jpg' if mode in ('RGB', 'L') else 'png'}"
        im.convert(mode).save(p)
        paths.append(str(p))
    res = _run(["defend-typo", paths[0], "--classes", "cat,dog,bird", *cli_files])
    assert res.exit_code == 0, res.output
    assert "no defence" in res.output and "defended" in res.output and "cat" in res.output
    res = _run(["defend-typo", *paths[1:], "--classes", "cat,dog", "--top", "2", *cli_files])
    assert res.exit_code == 0, res.output
    assert res.output.count("no defence") == 3


def test_cli_errors(tmp_path, cli_files):
    res = _run(["defend-typo", str(tmp_path / "missing.png"), *cli_files])
    assert res.exit_code == 2 and "does not exist" in res.output
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    res = _run(["defend-typo", str(bad), *cli_files])
    assert res.exit_code == 2 and "not a readable image" in res.output
    res = _run(["defend-typo", "attack", "x.png", "--eval", "world"])
    assert res.exit_code == 2 and "exactly one" in res.output
    res = _run(["defend-typo", "attack", str(tmp_path)])
    assert res.exit_code == 2 and "--out" in res.output
    res = _run(["defend-typo", "attack", str(bad), "--out", str(tmp_path / "o"), "--word", "cat", "--palette", "red"])
    assert res.exit_code == 2 and "two colours" in res.output


def test_cli_attack_then_eval_folder(tmp_path, cli_files):
    src = tmp_path / "photos"
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 70, 3), 60 * i + 40, np.uint8)).save(src / cls / f"{i}.png")
    out = tmp_path / "attacked"
    res = _run(["defend-typo", "attack", str(src), "--classes", "cat,dog,bird", "--out", str(out), "--control",
                "--font-size", "0.2,0.3", "--position", "bottom"])
    assert res.exit_code == 0, res.output
    from sae_vit.io.datasets import read_typographic

    frame = read_typographic(out)
    assert len(frame) == 12 and set(frame["label_name"]) == {"cat", "dog"}
    attacked = frame[frame["text"].isin(["cat", "dog", "bird"])]
    assert len(attacked) == 4 and (attacked["text"] != attacked["label_name"]).all()
    assert Image.open(attacked["path"].iloc[0]).size == (40, 40)
    res = _run(["defend-typo", "attack", str(src), "--word", "bird", "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = _run(["defend-typo", "--eval", str(out), *cli_files])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "no defence" in text and "4 attacked, 4 clean" in text


def test_world_native_set_pairs(bundle):
    data = typo.world_native_set(bundle.backbone, "val", 4)
    assert (data.written != data.labels).all()
    assert not torch.equal(data.clean, data.attacked) and not torch.equal(data.attacked, data.control)


def test_cli_no_args_shows_help():
    res = _run(["defend-typo"])
    assert "attack" in res.output and "--eval" in res.output


# ------------------------------------------------------------------------------------------ acceptance


@pytest.mark.slow
def test_toy_acceptance():
    """The shipped toy CLIP + shipped SAE: the defence recovers attacked accuracy (see docs/defend-typo.md)."""
    from sae_vit.world.toyclip import default_path

    if not default_path().is_file() or not (typo.asset_dir() / typo.ASSET_SAE).is_file():
        pytest.skip("the toy CLIP or the shipped typo SAE is not built yet")
    bundle = typo.load_model("toy")
    sae_path, feat_path = typo.default_pair()
    defence, feats = typo.defence_from_files(sae_path, feat_path, None)
    report = typo.run_world_eval(bundle, [(sae_path, defence.sae)], typo.EvalConfig(baselines=False))
    for name, rows in report.results.items():
        none, sae = rows["none"], rows["sae"]
        print(name, json.dumps({"none": none.as_dict(), "sae": sae.as_dict()}))
        assert sae.clean >= none.clean - 0.02
        assert sae.asr <= none.asr / 2
        assert sae.attacked >= min(0.8 * none.clean, none.control)
