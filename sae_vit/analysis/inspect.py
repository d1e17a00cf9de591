"""``saevit inspect``: what a feature is — its top-activating images, patch heatmaps, density and text labels.

One pass over the images keeps a running top-k per requested feature (by the maximum over patch tokens, and
separately by the CLS token), with each candidate's patch-activation grid, so the cost grows with the number
of images, not images × features. Rendering needs only Pillow; the index page is static HTML.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.core.atomic import atomic_write, write_text
from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE


@dataclass
class TopK:
    """Running top-k of one score over images, for every requested feature."""

    values: Tensor
    """[F, k] best scores so far (−inf where empty)."""
    images: Tensor
    """[F, k] image indices (−1 where empty)."""
    grids: Tensor
    """[F, k, n_patches] the feature's activation on each patch of those images."""

    @classmethod
    def empty(cls, n_features: int, k: int, n_patches: int) -> TopK:
        return cls(torch.full((n_features, k), -float("inf")), torch.full((n_features, k), -1, dtype=torch.long),
                   torch.zeros(n_features, k, n_patches))

    def update(self, scores: Tensor, image_index: Tensor, grids: Tensor) -> None:
        """Merge a batch: ``scores`` [B, F], ``image_index`` [B], ``grids`` [B, F, n_patches]."""
        k = self.values.shape[1]
        values = torch.cat([self.values, scores.T], dim=1)                          # [F, k + B]
        images = torch.cat([self.images, image_index[None].expand(len(scores.T), -1)], dim=1)
        all_grids = torch.cat([self.grids, grids.transpose(0, 1)], dim=1)           # [F, k + B, P]
        best = values.topk(k, dim=1).indices
        self.values, self.images = values.gather(1, best), images.gather(1, best)
        self.grids = all_grids.gather(1, best[..., None].expand(-1, -1, all_grids.shape[-1]))


@dataclass
class Inspection:
    """What :func:`collect` returns."""

    features: Tensor
    """[F] the inspected feature indices."""
    by_patch: TopK
    """Top images by the feature's maximum over patch tokens."""
    by_cls: TopK | None
    """Top images by the feature's CLS activation (None if the model has no CLS token)."""
    density: Tensor
    """[F] fraction of tokens (CLS and patches, all images) on which the feature fires."""
    grid_shape: tuple[int, int]
    n_images: int

    def to_frame(self):
        """One row per (feature, rank, ranking): feature, ranking ('patch' / 'cls'), rank, image, activation,
        hottest_patch (row-major index in the patch grid), density."""
        import pandas as pd

        tops = {"patch": self.by_patch, "cls": self.by_cls}
        return pd.DataFrame([{"feature": feat, "ranking": name, "rank": r, "image": int(top.images[fi, r]),
                              "activation": float(top.values[fi, r]),
                              "hottest_patch": int(top.grids[fi, r].argmax()),
                              "density": float(self.density[fi])}
                             for name, top in tops.items() if top is not None
                             for fi, feat in enumerate(self.features.tolist())
                             for r in range(top.values.shape[1]) if top.images[fi, r] >= 0])


@torch.no_grad()
def collect(backbone: Backbone, sae: SAE, images: Callable[[], object], features: Sequence[int], k: int = 16,
            progress: Callable[[int], None] | None = None) -> Inspection:
    """One pass over ``images()`` (an iterable of ``(image_indices [B], preprocessed [B,3,H,W])``) collecting
    the top-``k`` images of every feature in ``features``."""
    layer, site = sae.cfg.layer, sae.cfg.site
    feats = torch.tensor(list(features), dtype=torch.long)
    if len(feats) == 0 or feats.min() < 0 or feats.max() >= sae.cfg.d_sae:
        raise SaeVitError(f"Features must be indices in 0..{sae.cfg.d_sae - 1}.")
    n_patches = backbone.n_patches
    side = int(round(n_patches**0.5))
    grid_shape = tuple(backbone.model.patch_embed.grid_size) if hasattr(backbone.model.patch_embed, "grid_size") \
        else (side, n_patches // side)
    by_patch = TopK.empty(len(feats), k, n_patches)
    by_cls = TopK.empty(len(feats), k, n_patches) if backbone.has_cls else None
    fired = torch.zeros(len(feats))
    n_tokens = n_images = 0
    tokens = "all" if backbone.has_cls else "patches"
    for index, batch in images():
        acts = backbone.capture(batch.to(backbone.device), [layer], site, tokens)[layer]     # [B, T, d]
        f = sae.encode(acts)[..., feats.to(acts.device)].float().cpu()                      # [B, T, F]
        patches = f[:, 1:] if backbone.has_cls else f                                       # [B, P, F]
        grids = patches.transpose(1, 2)                                                      # [B, F, P]
        by_patch.update(patches.max(dim=1).values, index, grids)
        if by_cls is not None:
            by_cls.update(f[:, 0], index, grids)
        fired += (f > 0).float().sum(dim=(0, 1))
        n_tokens += f.shape[0] * f.shape[1]
        n_images += len(index)
        if progress:
            progress(n_images)
    if n_images == 0:
        raise SaeVitError("No images to inspect; pass --images with images or use --world.")
    for top in (by_patch, by_cls):
        if top is not None:  # an image where the feature does not fire is not a top image
            top.images[top.values <= 0] = -1
    return Inspection(feats, by_patch, by_cls, fired / max(n_tokens, 1), grid_shape, n_images)


@torch.no_grad()
def text_labels(backbone: Backbone, sae: SAE, features: Sequence[int], probe: Tensor, words: Sequence[str],
                text: Tensor, strength: float | None = None, top: int = 3) -> list[list[tuple[str, float]]]:
    """Top words per feature: cosine between the change of the image embedding caused by adding the feature's
    decoder direction at every token (averaged over ``probe`` images) and each word's text embedding.

    ``strength`` defaults to the mean norm of the hook's tokens (a push of one activation scale)."""
    from sae_vit.analysis.steer import build_context, sae_family

    ctx = build_context(backbone, sae.cfg.layer, sae.cfg.site, probe, text, sae.cfg.tokens, 1.0)
    fam, _ = sae_family(sae, ctx)
    s = strength if strength is not None else fam.unit_norm
    labels = []
    for feat in features:
        d = fam.directions(torch.tensor([feat]))[0]
        delta = ctx.site_to_resid(s * fam.scale * d)                      # [N, T_sel, d_model]
        resid = ctx.resid.clone()
        resid[:, ctx.positions] += delta.to(resid.dtype)
        moved = ctx.embeddings(resid) - ctx.base
        cos = F.normalize(moved.mean(0), dim=-1) @ text.T
        best = cos.topk(min(top, len(words)))
        labels.append([(words[i], float(v)) for v, i in zip(best.values, best.indices, strict=True)])
    return labels


def heatmap_overlay(image, grid: Tensor, grid_shape: tuple[int, int], vmax: float, size: int = 128):
    """The image resized to ``size`` with the patch activations overlaid in red (alpha ∝ activation)."""
    from PIL import Image

    base = image.convert("RGB").resize((size, size), Image.BICUBIC)
    heat = (grid.reshape(grid_shape).clamp_min(0) / max(vmax, 1e-8)).clamp(0, 1)
    alpha = Image.fromarray((heat.numpy() * 170).astype("uint8")).resize((size, size), Image.NEAREST)
    red = Image.new("RGB", (size, size), (255, 0, 0))
    return Image.composite(red, base, alpha)


def render_feature(path: Path, feature: int, inspection: Inspection, fi: int, load_image: Callable[[int], object],
                   labels: list[tuple[str, float]] | None, size: int = 112) -> Path:
    """One PNG: title line, then the top images by patch maximum (row 1) and by CLS (row 2), with heatmaps."""
    from PIL import Image, ImageDraw

    tops = {"max over patches": inspection.by_patch, "CLS token": inspection.by_cls}
    rows = [(name, top) for name, top in tops.items() if top is not None]
    k = inspection.by_patch.values.shape[1]
    pad, title_h, label_h = 4, 34, 14
    canvas = Image.new("RGB", (pad + k * (size + pad), title_h + len(rows) * (size + label_h + 18 + pad)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    words = ", ".join(f"{w} ({c:.2f})" for w, c in labels) if labels else "-"
    draw.text((pad, 2), f"feature {feature}   density {100 * float(inspection.density[fi]):.2f}% of tokens", fill=0)
    draw.text((pad, 16), f"text labels: {words}", fill=0)
    y = title_h
    for name, top in rows:
        draw.text((pad, y), name, fill=(60, 60, 60))
        y += 14
        vmax = float(top.grids[fi].max()) if top.images[fi, 0] >= 0 else 1.0
        if top.images[fi, 0] < 0:
            draw.text((pad, y + size // 2), "(the feature does not fire on any image)", fill=(150, 0, 0))
        for r in range(k):
            img_index = int(top.images[fi, r])
            if img_index < 0:
                continue
            x = pad + r * (size + pad)
            tile = heatmap_overlay(load_image(img_index), top.grids[fi, r], inspection.grid_shape, vmax, size)
            canvas.paste(tile, (x, y))
            draw.text((x, y + size + 1), f"#{img_index}: {float(top.values[fi, r]):.2f}", fill=0)
        y += size + label_h + pad
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def write_index(out: Path, rows: list[dict], title: str) -> Path:
    """A static index.html linking every feature's PNG (opens from disk, no server)."""
    body = [f"<h1>{html.escape(title)}</h1>", "<table border=1 cellpadding=4>",
            "<tr><th>feature</th><th>density</th><th>text labels</th><th>image</th></tr>"]
    for r in rows:
        body.append(f"<tr><td>{r['feature']}</td><td>{100 * r['density']:.2f}%</td><td>{html.escape(r['labels'])}</td>"
                    f"<td><a href=\"{html.escape(r['png'])}\"><img src=\"{html.escape(r['png'])}\" width=480></a></td></tr>")
    body.append("</table>")
    page = "<!doctype html><html><head><meta charset=utf-8><title>sae-vit inspect</title></head><body>" + \
        "\n".join(body) + "</body></html>\n"
    return write_text(out / "index.html", page)


def pick_features(d_sae: int, scores, steer_csv: Path, top_steerable: int | None, random: int | None,
                  seed: int) -> list[int]:
    """The ``top_steerable`` most steerable features by steer-score's ``scores``, or else ``random`` (16) random ones."""
    if not top_steerable:
        return torch.randperm(d_sae, generator=torch.Generator().manual_seed(seed))[: random or 16].tolist()
    if scores is None or scores.empty:
        raise SaeVitError(f"No steer-score results for this SAE in {steer_csv.parent}; run `saevit steer-score` "
                          "first or pass --features / --random.")
    features = scores[scores["steerable"]].sort_values("S", ascending=False)["index"].astype(int).head(top_steerable)
    if features.empty:
        raise SaeVitError(f"No steerable features in {steer_csv}; pass --features or --random instead.")
    return features.tolist()


def _image_batches(items, transform: Callable, batch_size: int):
    """``(image indices [B], preprocessed [B, 3, H, W])`` of ``items``; unreadable images are skipped."""
    from sae_vit.io.images import ImageDataset, collate_skip_unreadable

    loader = torch.utils.data.DataLoader(ImageDataset(items, transform), batch_size=batch_size,
                                         collate_fn=collate_skip_unreadable)
    for index, batch, _bad in loader:
        if batch is not None:
            yield torch.tensor(index), batch


def inspect_sae(sae: str | os.PathLike | None = None, model: str | None = None,
                weights: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                world: str | None = None, n_images: int = 1024, features: list[int] | None = None,
                top_steerable: int | None = None, random: int | None = None, k: int = 16,
                vocab: str | os.PathLike | None = None, text_embeddings: str | os.PathLike | None = None,
                steer_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                seed: int = 0, batch_size: int = 64, overwrite: bool = False, device: str = "auto",
                progress: Callable | None = None) -> dict:
    """Top-activating images, patch heatmaps, density and text labels for features of one SAE; writes one PNG
    per feature, ``features.csv`` and a static ``index.html`` under ``out``. Returns paths and the table."""
    import pandas as pd

    from sae_vit.analysis.common import check_sae_matches, concept_vocabulary, load_model, load_probe_images
    from sae_vit.analysis.steer import results_stem
    from sae_vit.core.atomic import write_csv
    from sae_vit.core.defaults import DEFAULT_MODEL, workdir
    from sae_vit.core.dist import resolve_device
    from sae_vit.io.resolve import find_saes
    from sae_vit.world.sources import open_source

    device = resolve_device(device)
    path = find_saes([sae] if sae else None)[0]
    model_sae = SAE.load(path, device)
    c = model_sae.cfg
    bundle = load_model(model or c.model or DEFAULT_MODEL, weights, text_embeddings, device)
    check_sae_matches(model_sae, bundle.backbone, path)
    out = Path(out) if out is not None else workdir() / "inspect" / f"layer_{c.layer}_{c.site}_{c.tokens}"
    steer_csv = (Path(steer_dir) if steer_dir is not None else workdir() / "steer") / f"{results_stem(c)}.csv"
    # steer-score's rows for this SAE's features, None when steer-score has not been run on it
    scores = pd.read_csv(steer_csv).query("kind == 'feature'") if steer_csv.is_file() else None
    targets = {} if scores is None else dict(zip(scores["index"].astype(int), scores["target"], strict=True))
    if features is None:
        features = pick_features(c.d_sae, scores, steer_csv, top_steerable, random, seed)
    items = open_source(images, world, n=n_images, seed=seed, split="val").items[:n_images]
    found = collect(bundle.backbone, model_sae, lambda: _image_batches(items, bundle.backbone.transform, batch_size),
                    features, k=k, progress=progress)
    try:
        words, text = concept_vocabulary(bundle, vocab)
    except SaeVitError:  # no text head for this model: labels are left out, not an error
        labels = None
    else:
        probe = load_probe_images(bundle.backbone, images, world, n_images=32, seed=seed + 1)
        labels = text_labels(bundle.backbone, model_sae, features, probe, words, text.to(device))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fi, feat in enumerate(features):
        lab = ([(f"steer: {targets[feat]}", float("nan"))] if feat in targets else []) + (labels[fi] if labels else [])
        png = render_feature(out / f"feature_{feat}.png", feat, found, fi, lambda i: items[i].open(), lab)
        rows.append({"feature": feat, "density": float(found.density[fi]), "png": png.name,
                     "labels": ", ".join(w for w, _ in lab)})
    table = found.to_frame()
    table["image_id"] = [items[i].id for i in table["image"]]
    write_csv(out / "features.csv", table)
    index = write_index(out, rows, f"{path} — layer {c.layer} {c.site} {c.tokens}, {found.n_images} images")
    return {"out": out, "index": index, "features": rows, "table": table, "inspection": found}
