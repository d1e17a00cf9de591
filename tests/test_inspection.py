"""inspect: the single-pass running top-k, the rendered files and the static index page."""

from html.parser import HTMLParser

import torch

from sae_vit.analysis.inspect import TopK, collect
from sae_vit.core.sae import SAE, SAEConfig


def _sae(backbone, layer=2):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=backbone.d_model, d_sae=40, k=8, model=backbone.name, layer=layer))
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
    return sae


def test_running_topk_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 6, generator=g)
    grids = torch.randn(50, 6, 9, generator=g)
    top = TopK.empty(6, 5, 9)
    for start in range(0, 50, 7):
        top.update(scores[start:start + 7], torch.arange(start, min(start + 7, 50)), grids[start:start + 7])
    best = scores.T.topk(5, dim=1)
    torch.testing.assert_close(top.values, best.values)
    assert torch.equal(top.images, best.indices)
    torch.testing.assert_close(top.grids, grids.transpose(0, 1).gather(1, best.indices[..., None].expand(-1, -1, 9)))


def test_collect_matches_per_feature_scan(tiny_backbone):
    sae = _sae(tiny_backbone)
    images = torch.randn(10, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    feats = [3, 7, 21]

    def batches():
        for s in range(0, 10, 4):
            yield torch.arange(s, min(s + 4, 10)), images[s:s + 4]

    found = collect(tiny_backbone, sae, batches, feats, k=3)
    with torch.no_grad():
        f = sae.encode(tiny_backbone.capture(images, [2])[2])[..., feats]          # [10, 101, 3]
    best = f[:, 1:].max(dim=1).values.T.topk(3, dim=1)
    assert (best.values > 0).all()  # no ties at zero for the patch ranking
    assert torch.equal(found.by_patch.images, best.indices)
    cls = f[:, 0].T.topk(3, dim=1)
    fires = cls.values > 0
    assert fires.any() and not fires.all()
    assert torch.equal(found.by_cls.images[fires], cls.indices[fires])
    assert (found.by_cls.images[~fires] == -1).all()  # images where the feature is silent are not listed
    torch.testing.assert_close(found.density, (f > 0).float().mean(dim=(0, 1)))
    frame = found.to_frame()
    assert set(frame["ranking"]) == {"patch", "cls"} and len(frame) == 3 * 3 + int(fires.sum())


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if (tag, name) in (("a", "href"), ("img", "src")):
                self.links.append(value)


def test_inspect_command_writes_pngs_and_index(tiny_vit, image_dir, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from sae_vit.cli import app
    from sae_vit.core.backbone import load_backbone

    sae = _sae(load_backbone(*tiny_vit))
    path = sae.save(tmp_path / "sae.safetensors")
    out = tmp_path / "inspect"
    r = CliRunner().invoke(app, ["inspect", "--sae", str(path), "--model", tiny_vit[0], "--weights", str(tiny_vit[1]),
                                 "--images", str(image_dir), "--features", "1,5", "--k", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    parser = _Links()
    parser.feed((out / "index.html").read_text())
    assert parser.links and all((out / link).is_file() for link in parser.links)
    tiles = {p.name for p in (out / "tiles").iterdir()}
    assert {"f1_patch_0.png", "f1_cls_0.png", "f5_patch_0.png"} <= tiles
    assert Image.open(out / "tiles" / "f1_patch_0.png").size[0] >= 2 * 160  # image and heatmap, readable size
    r = CliRunner().invoke(app, ["inspect", "--sae", str(path), "--model", tiny_vit[0], "--weights", str(tiny_vit[1]),
                                 "--images", str(image_dir), "--features", "1", "--out", str(out)])
    assert r.exit_code == 0 and (out / "index.html").is_file(), r.output  # pages are regenerated on a re-run
    r = CliRunner().invoke(app, ["inspect", "--sae", str(path), "--model", tiny_vit[0], "--weights", str(tiny_vit[1]),
                                 "--images", str(image_dir), "--features", "999", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "0..39" in r.output


def _world_batch(backbone, split, n, seed):
    """Preprocessed shapes-task images and, per image, which of the 8x8 patches overlap the object's box."""
    from sae_vit.world import scenes as world

    scenes, _ = world.task_scenes("shapes", split, n, seed)
    x = torch.stack([backbone.transform(world.render(s)) for s in scenes])
    masks = torch.zeros(n, 8, 8, dtype=torch.bool)
    for i, s in enumerate(scenes):
        (cx, cy), r = s.position, s.size
        for gy in range(8):
            for gx in range(8):
                masks[i, gy, gx] = gx * 8 < cx + r and gx * 8 + 8 > cx - r and gy * 8 < cy + r and gy * 8 + 8 > cy - r
    return x, masks.flatten(1)


def test_heatmap_hottest_patch_is_on_the_object():
    """With the shipped toy CLIP and SAE: a feature chosen on train images for firing on object patches has
    its hottest patch inside the object's bounding box on fresh test images (inspect's own top-k and grids)."""
    from sae_vit.core.backbone import load_backbone
    from sae_vit.core.sae import SAE

    backbone = load_backbone("toy")
    sae = SAE.load("sae_vit/assets/typo_sae.safetensors")
    layer = sae.cfg.layer
    x, masks = _world_batch(backbone, "train", 150, 0)
    with torch.no_grad():
        f = sae.encode(backbone.capture(x, [layer], tokens="patches")[layer])         # [N, 64, d_sae]
    on = (f * masks[..., None]).sum((0, 1)) / masks.sum()
    off = (f * (~masks)[..., None]).sum((0, 1)) / (~masks).sum()
    feature = int((on - off).argmax())

    x_test, m_test = _world_batch(backbone, "test", 80, 1)
    found = collect(backbone, sae, lambda: iter([(torch.arange(80), x_test)]), [feature], k=16)
    top = found.by_patch
    assert (top.images[0] >= 0).all()
    hottest = top.grids[0].argmax(dim=1)                                                  # [16]
    hits = m_test[top.images[0], hottest]
    chance = m_test.float().mean().item()
    assert hits.float().mean().item() >= 0.9 > chance + 0.2, (hits, chance)


def test_red_labelled_features_show_red_objects(tmp_path):
    """Acceptance 1 of #8, under #16's stricter steer-score: with the shipped toy CLIP and typo SAE, the features
    that steering at the paper's strength (``decide_at=None``, alpha = 150) moves to "red" (colours scored among
    colours) have top-16 images (inspect's single pass over fresh test images) with more red objects than chance,
    by the world's ground-truth colours. Measured 2026-12-02: 6 such features, red shares 0.12, 1.0, 1.0, 0.38,
    0.0, 0.19 (mean 0.45, chance 0.19): only 2 of 6 are mostly red. The earlier "17 of 28 mostly red" came from a
    flat 19-word vocabulary and the threshold-only rule. steer-score's agreement test (docs/steer.md) measures the
    same question for every unit against random directions."""
    from sae_vit.analysis.steer import SteerConfig, score_saes
    from sae_vit.core.backbone import load_backbone
    from sae_vit.core.sae import SAE
    from sae_vit.world import scenes as world

    sae_path = "sae_vit/assets/typo_sae.safetensors"
    report = score_saes([sae_path], n_images=24, max_features=None, neurons=False, random_control=16,
                        config=SteerConfig(decide_at=None), out=tmp_path / "steer")[0]
    u = report.units
    red = u[(u.kind == "feature") & (u.target == "red")]
    assert len(red) >= 3

    backbone, sae = load_backbone("toy"), SAE.load(sae_path)
    frame, images = world.make_task("shapes", "test", 1000, seed=3)
    x = torch.stack([backbone.transform(im) for im in images])
    found = collect(backbone, sae, lambda: iter([(torch.arange(len(x)), x)]), red["index"].tolist(), k=16).to_frame()
    found = found[found.ranking == "patch"]
    red_share = [
        (frame.colour.values[found.image[found.feature == f].values] == "red").mean() for f in red["index"]
    ]
    chance = (frame.colour == "red").mean()
    assert sum(red_share) / len(red_share) >= 2 * chance, (red_share, chance)
