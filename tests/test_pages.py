"""The static pages: inspect's feature browser (right for CLS-only, patch-only and all-token SAEs, live features
only) and the demo's report page."""

from __future__ import annotations

import re

import torch

from sae_vit.analysis.inspect import clean_labels, collect, live_features, pick_features
from sae_vit.core.sae import SAE, SAEConfig


def _sae(backbone, tokens: str, dead: int = 0):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=backbone.d_model, d_sae=40, k=8, model=backbone.name, layer=2, tokens=tokens))
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
        sae.b_enc[:dead] = -1e6  # these never fire
    return sae


def _batches(images):
    return lambda: ((torch.arange(s, min(s + 4, len(images))), images[s:s + 4]) for s in range(0, len(images), 4))


def test_cls_only_sae_reads_cls_tokens_only(tiny_backbone):
    sae = _sae(tiny_backbone, "cls")
    images = torch.randn(10, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    feats = list(range(40))
    found = collect(tiny_backbone, sae, _batches(images), feats, k=3)
    assert found.by_patch is None and found.tokens == "cls" and set(found.rows()) == {"cls"}
    with torch.no_grad():
        f = sae.encode(tiny_backbone.capture(images, [2], tokens="cls")[2])               # [10, 1, 40]
    torch.testing.assert_close(found.density, (f > 0).float().mean(dim=(0, 1)))      # over CLS tokens only
    fires = found.by_cls.images[:, 0] >= 0
    assert fires.any()
    assert (found.density[fires] >= 1 / 10).all()  # a feature with a top image is never "dead"
    assert (found.density[~fires] == 0).all()
    assert found.by_cls.grids.shape[-1] == 0  # no patch heatmap: the SAE never saw patch tokens
    assert (found.to_frame()["ranking"] == "cls").all()


def test_patch_only_sae_has_no_cls_row(tiny_backbone):
    sae = _sae(tiny_backbone, "patches")
    images = torch.randn(6, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    found = collect(tiny_backbone, sae, _batches(images), [1, 2], k=2)
    assert found.by_cls is None and set(found.rows()) == {"patch"}
    with torch.no_grad():
        f = sae.encode(tiny_backbone.capture(images, [2], tokens="patches")[2])[..., [1, 2]]
    torch.testing.assert_close(found.density, (f > 0).float().mean(dim=(0, 1)))


def test_random_sampling_skips_dead_features(tiny_backbone, tmp_path):
    sae = _sae(tiny_backbone, "all", dead=30)
    images = torch.randn(8, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    live = live_features(tiny_backbone, sae, _batches(images))
    assert live.min() >= 30 and len(live) > 0
    picked = pick_features(40, None, tmp_path / "x.csv", None, 16, seed=0, live=live)
    assert len(picked) == min(16, len(live)) and all(p >= 30 for p in picked)
    assert len(pick_features(40, None, tmp_path / "x.csv", None, 40, seed=0)) == 40  # --include-dead


def test_labels_drop_nan_duplicates_and_the_target():
    labels = [("green", 0.5), ("red", float("nan")), ("land", 0.3), ("green", 0.2), ("yellow", 0.1)]
    assert clean_labels(labels, "yellow") == [("green", 0.5), ("land", 0.3)]
    assert clean_labels(None, None) == []


def test_browser_page_for_a_cls_only_sae(tiny_vit, image_dir, tmp_path):
    from html.parser import HTMLParser

    from PIL import Image

    from sae_vit.analysis.inspect import inspect_sae
    from sae_vit.core.backbone import load_backbone

    path = _sae(load_backbone(*tiny_vit), "cls", dead=20).save(tmp_path / "sae.safetensors")
    result = inspect_sae(path, tiny_vit[0], tiny_vit[1], image_dir, random=8, k=3, out=tmp_path / "out",
                         device="cpu")
    text = result["index"].read_text()
    srcs = []

    class Imgs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            srcs.extend(v for k, v in attrs if tag == "img" and k == "src")

    Imgs().feed(text)
    assert srcs and all((tmp_path / "out" / s).is_file() for s in srcs)
    assert Image.open(tmp_path / "out" / srcs[0]).size == (160, 160)  # image only: no patch heatmap
    assert "top images by the CLS token" in text and "maximum over patch tokens" not in text
    assert "the CLS token only" in text and not re.search(r"\bnan\b", text.split("<script>")[0], re.I)
    for row in result["features"]:
        assert row["feature"] >= 20 and row["density"] > 0  # sampled among live features; none called dead
        assert row["tiles"]["cls"]


def _capture_figure(monkeypatch):
    import sae_vit.core.atomic as atomic

    figures = []
    real = atomic.save_figure
    monkeypatch.setattr(atomic, "save_figure", lambda fig, path, **kw: (figures.append(fig), real(fig, path))[1])
    return figures


def test_sparsity_plot_has_fvu_l0_and_dead_panels(monkeypatch, tmp_path):
    import pandas as pd

    from sae_vit.analysis.sparsity import plot_l0

    figures = _capture_figure(monkeypatch)
    df = pd.DataFrame([{"layer": layer, "tokens": t, "site": "resid_post", "architecture": "topk", "l0": 16,
                        "fvu": 0.1 * layer + i, "dead_fraction": 0.01 * i}
                       for i, t in enumerate(("cls", "patches", "all")) for layer in (2, 5)])
    assert plot_l0(df, tmp_path / "s.png").is_file()
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["FVU", "L0", "dead latents"]
    assert all(len(ax.get_lines()) == 3 for ax in axes)
    assert max(max(line.get_ydata()) for line in axes[2].get_lines()) == 2.0  # dead fraction in percent


def test_steer_plot_families_differ_and_legend_is_outside(monkeypatch, tmp_path):
    import pandas as pd

    from sae_vit.analysis.steer import plot_curves

    figures = _capture_figure(monkeypatch)
    units = pd.DataFrame([{"kind": kind, "index": i, "target": "red", "S": 0.1, "S_alpha_0": 0.0, "S_alpha_5": 0.1 * i}
                          for kind in ("feature", "neuron", "random") for i in range(10)])
    assert plot_curves(units, tmp_path / "c.png").is_file()
    ax = figures[0].axes[0]
    lines = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in ax.get_lines()
             if not line.get_label().startswith("_")}
    styles = [style for label, style in lines.items() if "top" in label]
    assert len(styles) == 3 and len(set(styles)) == 3 and len({c for c, _ in styles}) == 3
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, never over the curves


def _contrast(layer, ratio, **extra) -> dict:
    return {"layer": layer, "ratio": ratio, "lo": ratio - 0.03, "hi": ratio + 0.03, "holds": ratio - 0.03 > 1.05,
            "margin": 1.05, "n_boot": 1000, **extra}


def _demo_results(zs_sae_worst: float, zs_layer: int, typo_attacked: float) -> dict:
    """A demo's results as :mod:`sae_vit.pipeline.demo_steps` returns them, with chosen numbers."""
    topk = [{"layer": layer, "tokens": t, "architecture": "topk", "d_sae": 512, "k": 16, "l1_coefficient": None,
             "l0": 16.0, "fvu": fvu, "dead_fraction": 0.25, "dense_fraction": 0.0, "n_eval_tokens": n,
             "reliable": n >= 390}
            for layer, t, fvu, n in ((2, "cls", 0.004, 100), (2, "patches", 0.03, 6528), (8, "cls", 0.009, 409),
                                     (8, "patches", 0.025, 6528))]
    relu = [{"layer": layer, "tokens": t, "architecture": "relu", "d_sae": 512, "k": None, "l1_coefficient": 1e-3,
             "l0": l0, "fvu": 0.04, "dead_fraction": 0.01, "dense_fraction": 0.3, "n_eval_tokens": 409 if t == "cls"
             else 6528, "reliable": True}
            for layer, t, l0 in ((2, "cls", 60.0), (2, "patches", 86.0), (8, "cls", 70.0), (8, "patches", 88.0))]
    sparsity = {"rows": topk + relu, "plot": None, "d_model": 64, "relu_l1": 1e-3, "cls_images": 8192,
                "min_eval_tokens": 390, "margin": 1.05,
                "patches_vs_cls": [_contrast(2, 1.43), _contrast(8, 1.26)],
                "cls_depth": _contrast(None, 1.17, first=2, last=8)}
    kinds = {"feature": {"scored": 64, "steerable": 20, "fraction": 20 / 64, "distinct_targets": 5,
                         "live_on_probe": 300, "agreement": 0.2, "chance": 0.06},
             "neuron": {"scored": 64, "steerable": 10, "fraction": 10 / 64, "distinct_targets": 3,
                        "agreement": 0.1, "chance": 0.06},
             "random": {"scored": 64, "steerable": 5, "fraction": 5 / 64, "distinct_targets": 2,
                        "agreement": 0.05, "chance": 0.06}}
    nulls = {"null_noise": {"S": 0.002, "steerable": False}, "null_erase": {"S": 0.046, "steerable": False},
             "null_erase_full": {"S": 1.06, "steerable": True}}
    steer = {"layers": [{"layer": layer, "d_sae": 512, "kinds": kinds, "alphas": [-5, 0, 5, 10, 20], "threshold": 0.1,
                         "n_images": 32, "vocabulary": 19, "attributes": ["object", "colour", "background", "size"],
                         "rule": "S > threshold and S > the nulls", "null_bar": 0.046,
                         "nulls": {name: dict(v) for name, v in nulls.items()},
                         "decision": {"token_norms": 0.25, "alpha": 6.9, "s": 4.83},
                         "agreement_tests": {"feature_vs_random": {"difference": 0.15, "p": 0.0123, "n_perm": 10000}},
                         "top": [{"index": 7, "target": "red", "S": 0.5}], "plot": None} for layer in (2, 8)]}

    def row(method, layer, n, worst):
        return {"eval": "zero_shot", "method": method, "layer": layer, "n": n, "val_worst": 0.5, "test_avg": 0.8,
                "test_avg_weighted": 0.9, "test_worst": worst, "test_worst_std": 0.0, "draws": 1}

    suppress = {"n_images": {"train": 400, "val": 400, "test": 400}, "groups": {"0": "y=0, place=0"},
                "classes": ["car", "boat"], "tokens": "all", "layers": [2, 5, 8], "n_features": [4, 16, 64],
                "chosen": {}, "by_layer": [], "features": [], "plot": None, "csv": "suppress/suppress_table.csv",
                "table": [row("none", None, None, 0.4125), row("sae", zs_layer, 16, zs_sae_worst),
                          row("random", zs_layer, 16, 0.3875), row("random_rate", zs_layer, 16, 0.30),
                          row("random_act", zs_layer, 16, 0.05), row("projection", 5, None, 0.5)]}
    gain = (typo_attacked - 0.137) - (0.38 - 0.23)
    typo = {"sae": "typo_sae.safetensors", "features_file": "typo_features.json", "layer": 2, "n": 32,
            "defence": "SAE features, layer 2, N=32", "n_images": 600, "selected_on": {},
            "metrics": {"none": {"clean": 0.995, "attacked": 0.137, "control": 0.23, "asr": 0.593, "n_images": 600,
                                 "attack_gain": 0.0, "control_gain": 0.0, "reading_gain": 0.0},
                        "sae": {"clean": 0.982, "attacked": typo_attacked, "control": 0.38, "asr": 0.117,
                                "n_images": 600, "attack_gain": typo_attacked - 0.137, "control_gain": 0.15,
                                "reading_gain": gain}}}
    return {"config": {"n_images": 2048, "layers": [2, 8], "k": 16, "expansion": 8, "n_tokens": 400000},
            "sparsity": sparsity, "steer": steer, "suppress": suppress,
            "typo": typo, "timings": {"cache": 1.0}, "inspect": {"index": "inspect/index.html", "layer": 8,
                                                                 "tokens": "all", "n_features": 6, "n_images": 32,
                                                                 "picked": "steer-scored live features"}}


def _claims(text: str) -> dict[str, str]:
    """Section id -> its verdict badge."""
    return dict(re.findall(r"<section class=claim id=(\w+)><h2>[^<]*<span class='badge \w+'>([\w ]+)</span>", text))


def test_report_shows_the_runs_numbers_beside_the_papers(tmp_path):
    from sae_vit.pipeline.report import write_report

    text = write_report(tmp_path, _demo_results(0.8250, 5, 0.4617)).read_text()
    assert _claims(text) == {"sparsity": "reproduced", "steer": "reproduced", "suppress": "reproduced",
                             "typo": "partly reproduced"}  # the toy runs no baseline: never "best defence"
    # this run's numbers, formatted from the results
    assert "41.2 % to 82.5 %" in text and "+41.2 points" in text and "38.8 %" in text  # none -> SAE; random
    assert "matched on firing rate 30.0 %" in text and "matched on mean activation 5.0 %" in text
    assert "13.7 % to 46.2 %" in text and "59.3 % to 11.7 %" in text  # attacked accuracy, attack success
    assert "reading-specific gain</b> (attack gain minus control gain) is +17.5 points" in text
    assert "1.26–1.43×" in text and "1.43× (95 % interval 1.40–1.46)" in text  # ReLU patch / CLS L0 ratios
    assert "from 60.0 at layer 2 to 70.0 at layer 8" in text and "(few: unreliable)" in text  # CLS L0; 100 tokens
    assert "0.002 / 0.046 / 1.060" in text and "0.0123" in text  # nulls' S; agreement permutation p
    # the paper's beside them, and the way to the feature browser
    assert "259 were steerable (10.5 %" in text and "L0 293" in text
    assert "href='inspect/index.html'" in text
    assert not re.search(r"\bnan\b", text, re.I)


def test_report_says_when_the_toy_does_not_reproduce_a_claim(tmp_path):
    from sae_vit.pipeline.report import write_report

    results = _demo_results(0.40, 2, 0.24)  # suppression at an edge layer that does not help; control gains alike
    results["steer"]["layers"][0]["kinds"] = {**results["steer"]["layers"][0]["kinds"],
                                              "neuron": {"scored": 64, "steerable": 58, "fraction": 0.9}}
    results["steer"]["layers"][1]["nulls"]["null_erase"]["steerable"] = True  # a strength-matched null steers
    results["sparsity"]["cls_depth"] = _contrast(None, 1.02, first=2, last=8)  # the CLS token no denser with depth
    results.pop("inspect")
    text = write_report(tmp_path, results).read_text()
    claims = _claims(text)
    assert claims["suppress"] == "not reproduced" and claims["typo"] == "not reproduced"
    assert claims["steer"] == "partly reproduced" and "Null edits above the threshold: null_erase (layer 8)" in text
    assert claims["sparsity"] == "partly reproduced" and "does <b>not</b> clearly get denser with depth" in text
    assert "not reproduced" in text and "the paper's middle-layer optimum is not reproduced" in text
    assert "feature browser" not in text


def test_report_without_relu_saes_says_the_sparsity_claim_was_not_judged(tmp_path):
    from sae_vit.pipeline.report import write_report

    results = _demo_results(0.8250, 5, 0.4617)
    sparsity = results["sparsity"]
    sparsity["rows"] = [x for x in sparsity["rows"] if x["architecture"] == "topk"]
    sparsity["patches_vs_cls"], sparsity["cls_depth"] = [], None
    text = write_report(tmp_path, results).read_text()
    assert _claims(text)["sparsity"] == "not run" and "L0 is k by construction" in text


def test_an_empty_row_says_which_tokens_the_feature_never_fires_on():
    from sae_vit.analysis.report import _tiles_html

    assert "never fires at the CLS token" in _tiles_html("cls", [])  # it may still fire on patches
    assert "never fires on a patch token" in _tiles_html("patch", [])
