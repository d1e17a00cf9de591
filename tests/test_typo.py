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


def _photo_folder(src, shape: tuple[int, int]):
    """Two plain grey images of each of the classes cat and dog under ``src/<class>/``."""
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((*shape, 3), 60 * i + 40, np.uint8)).save(src / cls / f"{i}.png")
    return src


def test_cli_attack_then_eval_folder(tmp_path, cli_files):
    src = _photo_folder(tmp_path / "photos", (40, 70))
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
    # issue #16: more than undone occlusion on our recipe and on the family the SAE and selection never saw
    assert report.results["test (discovery recipe)"]["sae"].reading_gain > 0
    assert report.results["test (held-out family)"]["sae"].reading_gain > 0


# ------------------------------------------------------------------------------------------ reading-specific gain


def test_selection_is_by_reading_gain_not_attacked_accuracy():
    base = typo.TypoMetrics(0.99, 0.2, 0.3, 0.5, 10)
    base = base.against(base)
    occlusion = typo.TypoMetrics(0.99, 0.7, 0.8, 0.1, 10).against(base)   # lifts the control as much: gain 0
    reading = typo.TypoMetrics(0.99, 0.5, 0.35, 0.1, 10).against(base)    # lower attacked, but specific
    too_costly = typo.TypoMetrics(0.90, 0.9, 0.3, 0.0, 10).against(base)  # drops clean accuracy 9 points
    assert base.reading_gain == 0 and abs(occlusion.reading_gain) < 1e-9
    assert abs(reading.reading_gain - (0.3 - 0.05)) < 1e-9
    assert typo.best_setting([base, occlusion, reading, too_costly], base.clean, 0.02) == 2
    assert typo.best_setting([base, occlusion], base.clean, 0.02) == 0  # ties go to the first (no defence)


def test_world_eval_reports_reading_gain_and_held_out_family(bundle):
    sae = _sae(2)
    cfg = typo.EvalConfig(n_discovery=8, n_val=8, n_test=8, ns=(0, 4), baselines=False)
    report = typo.run_world_eval(bundle, [("l2.safetensors", sae)], cfg)
    assert "test (held-out family)" in report.results and "test (held-out colours)" in report.results
    assert len(report.results) == len(cfg.test_sets) == 5
    for rows in report.results.values():
        none, sae_m = rows["none"], rows["sae"]
        assert none.reading_gain == none.attack_gain == none.control_gain == 0
        assert sae_m.reading_gain == pytest.approx((sae_m.attacked - none.attacked) - (sae_m.control - none.control))
    assert all(r["reading_gain"] == r["reading_gain"] for r in report.sweep)  # computed (not NaN) for every row
    chosen = next(r for r in report.sweep if r["n"] == report.n)
    assert chosen["reading_gain"] == max(r["reading_gain"] for r in report.sweep
                                         if report.sweep[0]["clean"] - r["clean"] <= cfg.max_clean_drop + 1e-9)


def test_cli_eval_world_prints_reading_gain(tmp_path, tiny_vit, text_file):
    sae_path = _sae(2).save(tmp_path / "sae.safetensors")
    res = _run(["defend-typo", "eval", "world", "--sae", str(sae_path), "--model", tiny_vit[0], "--weights",
                str(tiny_vit[1]), "--text-embeddings", str(text_file), "--n-discovery", "8", "--n-val", "8",
                "--n-test", "8", "--no-baselines", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    held = doc["results"]["test (held-out family)"]["sae"]
    assert {"attack_gain", "control_gain", "reading_gain"} <= set(held)
    assert isinstance(held["reading_gain"], float)
    tests = [t for t in doc["tables"] if t["title"].startswith("test (")]
    assert len(tests) == 5 and all("reading gain" in row for t in tests for row in t["rows"])
    assert "reading gain" in doc["tables"][0]["rows"][0]  # the validation sweep


def test_cli_eval_folder_with_controls_reports_reading_gain(tmp_path, cli_files):
    src = _photo_folder(tmp_path / "photos", (40, 40))
    out = tmp_path / "attacked"
    assert _run(["defend-typo", "attack", str(src), "--classes", "cat,dog,bird", "--out", str(out),
                 "--control"]).exit_code == 0
    res = _run(["defend-typo", "eval", str(out), *cli_files, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["none"]["n_control"] == 4 and doc["none"]["n_attacked"] == 4 and doc["none"]["n_clean"] == 4
    assert doc["sae"]["reading_gain"] == pytest.approx(
        (doc["sae"]["attacked"] - doc["none"]["attacked"]) - (doc["sae"]["control"] - doc["none"]["control"]))
    assert "reading gain" in doc["tables"][0]["rows"][0]
    assert "bird" in doc["classes"] and len(doc["classes"]) == 3  # the pseudo-words are not classes


# ------------------------------------------------------------------------------------------ controls and families


def test_control_words_match_attack_word_lengths(bundle):
    for data in (typo.world_typo_set(bundle.backbone, "val", 24, typo.FAMILIES["held-out"]),
                 typo.world_native_set(bundle.backbone, "val", 24)):
        assert len(data.written_words) == len(data.control_words) == 24
        assert [len(w) for w in data.written_words] == [len(c) for c in data.control_words]  # pair by pair
        assert not set(data.control_words) & set(typo.world.SHAPES)
    # and so the length distributions are equal over many draws of the recipe (every shape name)
    rng = np.random.default_rng(0)
    base = Image.new("RGB", (64, 64), (90, 90, 90))
    words = [typo.world.SHAPES[i % 6] for i in range(60)]
    controls = [typo_attacks.attack_twins(base, w, rng, typo.FAMILIES["discovery"], typo.world.SHAPES)[3] for w in words]
    assert sorted(map(len, controls)) == sorted(map(len, words))


def test_cli_attack_controls_match_lengths(tmp_path):
    src = tmp_path / "photos" / "cat"
    src.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(src / f"{i}.png")
    out = typo.write_attacks([tmp_path / "photos"], tmp_path / "att", classes=["cat", "dog", "elephant", "ox"],
                             control=True)
    import pandas as pd

    meta = pd.read_csv(out / "metadata.csv")
    attack, control = meta[meta["kind"] == "attack"], meta[meta["kind"] == "control"]
    assert list(attack["text"].str.len()) == list(control["text"].str.len())


def test_held_out_family_is_kept_out_of_sae_training():
    held = [typo.FAMILIES[n] for n in ("held-out", "held-out colours")]
    for cfg in typo.SAE_TRAINING_ATTACKS:
        assert cfg.stroke not in {h.stroke for h in held} and cfg.position not in {h.position for h in held}
        assert not set(cfg.palette) & set(typo.FAMILIES["held-out colours"].palette)

    def centres(cfg):  # vertical centres of a word's ink over 200 draws, on a 64-px image
        rng = np.random.default_rng(2)
        out = []
        for _ in range(200):
            pl = typo_attacks.choose_placement((64, 64), "circle", rng, cfg)
            y0, y1 = typo_attacks._font(None, pl.size).getbbox("circle", stroke_width=pl.stroke_width)[1::2]
            out.append(pl.xy[1] + (y0 + y1) / 2)
        return out
    # the held-out band's words are centred below every SAE training word
    assert max(c for cfg in typo.SAE_TRAINING_ATTACKS for c in centres(cfg)) < min(centres(held[0]))
    source = typo.sae_training_images(6)
    assert all(typo.HELD_OUT in item.id for item in source.items)  # a cache of another recipe is never reused


# ------------------------------------------------------------------------------------------ resize warning


def test_cli_classify_warns_once_when_an_image_is_shrunk(tmp_path, cli_files):
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (900, 400), (200, 10, 10)).save(big)  # shorter side 400 > 2 x 160 (the tiny model's side)
    Image.new("RGB", (300, 300), (200, 10, 10)).save(small)
    res = _run(["defend-typo", str(big), "--classes", "cat,dog", *cli_files])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "warning:" in line]
    assert len(lines) == 1 and "160x160 px" in lines[0] and "Traceback" not in res.output
    res = _run(["defend-typo", str(big), str(small), "--classes", "cat,dog", *cli_files, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["warnings"]) == 1 and "900x400" in doc["warnings"][0]
    assert typo.resize_warning("x.png", (320, 999), 160) is None  # the rule: shorter side > 2 x the input side
