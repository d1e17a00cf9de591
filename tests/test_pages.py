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
    df = pd.DataFrame([{"layer": layer, "tokens": t, "site": "resid_post", "l0": 16, "fvu": 0.1 * layer + i,
                        "dead_fraction": 0.01 * i} for i, t in enumerate(("cls", "patches", "all")) for layer in (2, 5)])
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
