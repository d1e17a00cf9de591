"""``saevit inspect``: what a feature is — its top-activating images, patch heatmaps, density and text labels.

One pass over the images keeps a running top-k per requested feature (by the maximum over patch tokens, and
separately by the CLS token), with each candidate's patch-activation grid, so the cost grows with the number
of images, not images × features. Rendering needs only Pillow; the index page is static HTML.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.core.atomic import atomic_write
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
    by_patch: TopK | None
    """Top images by the feature's maximum over patch tokens (None when the SAE does not read patch tokens)."""
    by_cls: TopK | None
    """Top images by the feature's CLS activation (None when the SAE does not read the CLS token)."""
    density: Tensor
    """[F] fraction of the tokens the SAE reads (its ``cfg.tokens``, all images) on which the feature fires."""
    grid_shape: tuple[int, int]
    n_images: int
    tokens: str = "all"
    """The token types the SAE reads and the density counts: ``cls``, ``patches`` or ``all``."""

    def rows(self) -> dict[str, TopK]:
        """The rankings present, by their name in the page and the table (``patch`` / ``cls``)."""
        return {name: top for name, top in (("patch", self.by_patch), ("cls", self.by_cls)) if top is not None}

    def max_activation(self) -> Tensor:
        """[F] the largest activation seen per feature (0 when it never fires)."""
        best = torch.stack([top.values[:, 0] for top in self.rows().values()]).max(0).values
        return best.clamp_min(0)

    def to_frame(self):
        """One row per (feature, rank, ranking): feature, ranking ('patch' / 'cls'), rank, image, activation,
        hottest_patch (row-major index in the patch grid, −1 for a CLS-only SAE), density."""
        import pandas as pd

        return pd.DataFrame([{"feature": feat, "ranking": name, "rank": r, "image": int(top.images[fi, r]),
                              "activation": float(top.values[fi, r]),
                              "hottest_patch": int(top.grids[fi, r].argmax()) if top.grids.shape[-1] else -1,
                              "density": float(self.density[fi])}
                             for name, top in self.rows().items()
                             for fi, feat in enumerate(self.features.tolist())
                             for r in range(top.values.shape[1]) if top.images[fi, r] >= 0])


def read_tokens(backbone: Backbone, sae: SAE) -> tuple[str, bool, bool]:
    """``(tokens to capture, reads CLS, reads patches)`` for the SAE's ``cfg.tokens`` on this backbone."""
    tokens = sae.cfg.tokens if backbone.has_cls else "patches"
    return tokens, tokens in ("cls", "all"), tokens in ("patches", "all")


@torch.no_grad()
def collect(backbone: Backbone, sae: SAE, images: Callable[[], object], features: Sequence[int], k: int = 16,
            progress: Callable[[int], None] | None = None) -> Inspection:
    """One pass over ``images()`` (an iterable of ``(image_indices [B], preprocessed [B,3,H,W])``) collecting
    the top-``k`` images of every feature in ``features``, on the tokens the SAE reads only: a CLS-only SAE
    is never run on patch tokens, so it has no patch ranking and no heatmap."""
    layer, site = sae.cfg.layer, sae.cfg.site
    feats = torch.tensor(list(features), dtype=torch.long)
    if len(feats) == 0 or feats.min() < 0 or feats.max() >= sae.cfg.d_sae:
        raise SaeVitError(f"Features must be indices in 0..{sae.cfg.d_sae - 1}.")
    tokens, reads_cls, reads_patches = read_tokens(backbone, sae)
    n_patches = backbone.n_patches if reads_patches else 0
    side = int(round(backbone.n_patches**0.5))
    grid_shape = tuple(backbone.model.patch_embed.grid_size) if hasattr(backbone.model.patch_embed, "grid_size") \
        else (side, backbone.n_patches // side)
    by_patch = TopK.empty(len(feats), k, n_patches) if reads_patches else None
    by_cls = TopK.empty(len(feats), k, n_patches) if reads_cls else None
    fired = torch.zeros(len(feats))
    n_tokens = n_images = 0
    for index, batch in images():
        acts = backbone.capture(batch.to(backbone.device), [layer], site, tokens)[layer]     # [B, T, d]
        f = sae.encode(acts)[..., feats.to(acts.device)].float().cpu()                      # [B, T, F]
        patches = f[:, int(reads_cls):]                                                      # [B, P, F]
        grids = patches.transpose(1, 2)                                                      # [B, F, P]
        if by_patch is not None:
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
    return Inspection(feats, by_patch, by_cls, fired / max(n_tokens, 1), grid_shape, n_images, tokens)


@torch.no_grad()
def live_features(backbone: Backbone, sae: SAE, images: Callable[[], object], max_images: int = 256) -> Tensor:
    """Indices of the features that fire at least once on the tokens the SAE reads, over up to ``max_images``
    of ``images()`` (same iterable as :func:`collect`)."""
    tokens = read_tokens(backbone, sae)[0]
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    seen = 0
    for _index, batch in images():
        acts = backbone.capture(batch.to(backbone.device), [sae.cfg.layer], sae.cfg.site, tokens)[sae.cfg.layer]
        fired |= (sae.encode(acts) > 0).flatten(0, 1).any(0).cpu()
        seen += len(batch)
        if seen >= max_images:
            break
    return fired.nonzero().flatten()


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


def heatmap(grid: Tensor, grid_shape: tuple[int, int], vmax: float, size: int = 160, cmap: str = "magma"):
    """The patch activations as a ``size``-pixel image in a perceptual colormap (0 → dark, ``vmax`` → bright);
    matplotlib's colormap when it is installed, else grey levels."""
    import numpy as np
    from PIL import Image

    heat = (grid.reshape(grid_shape).clamp_min(0) / max(vmax, 1e-8)).clamp(0, 1).numpy()
    try:
        import matplotlib

        rgb = matplotlib.colormaps[cmap](heat)[..., :3]
    except ImportError:
        rgb = np.repeat(heat[..., None], 3, axis=-1)
    return Image.fromarray((rgb * 255).astype("uint8")).resize((size, size), Image.NEAREST)


def tile(image, grid: Tensor, grid_shape: tuple[int, int], vmax: float, size: int = 160):
    """The image at ``size`` pixels with, when ``grid`` holds patch activations, its heatmap beside it."""
    from PIL import Image

    base = image.convert("RGB").resize((size, size), Image.BICUBIC)
    if grid.numel() == 0:
        return base
    canvas = Image.new("RGB", (2 * size + 4, size), (255, 255, 255))
    canvas.paste(base, (0, 0))
    canvas.paste(heatmap(grid, grid_shape, vmax, size), (size + 4, 0))
    return canvas


def render_tiles(folder: Path, feature: int, inspection: Inspection, fi: int, load_image: Callable[[int], object],
                 image_ids: Sequence[str], size: int = 160) -> dict[str, list[dict]]:
    """Write one PNG per top image of ``feature`` under ``folder``; per ranking, the tiles' ``src`` (relative to
    the folder's parent), image index and id, and activation, best first. Heatmaps of a ranking share a scale."""
    rows = {}
    for name, top in inspection.rows().items():
        vmax = float(top.grids[fi].max()) if top.grids.shape[-1] and top.images[fi, 0] >= 0 else 1.0
        tiles = []
        for r in range(top.values.shape[1]):
            img_index = int(top.images[fi, r])
            if img_index < 0:
                continue
            png = folder / f"f{feature}_{name}_{r}.png"
            picture = tile(load_image(img_index), top.grids[fi, r], inspection.grid_shape, vmax, size)
            atomic_write(png, lambda tmp, p=picture: p.save(tmp, format="PNG"))
            tiles.append({"src": f"{folder.name}/{png.name}", "image": img_index, "id": str(image_ids[img_index]),
                          "activation": float(top.values[fi, r])})
        rows[name] = tiles
    return rows


def clean_labels(labels: Sequence[tuple[str, float]] | None, target: str | None) -> list[tuple[str, float]]:
    """Text labels without NaN scores, repeated words or the steer target (which the page shows on its own)."""
    seen = {target} if isinstance(target, str) else set()
    kept = []
    for word, score in labels or []:
        if word in seen or score != score:
            continue
        seen.add(word)
        kept.append((word, score))
    return kept


def pick_features(d_sae: int, scores, steer_csv: Path, top_steerable: int | None, random: int | None,
                  seed: int, live: Tensor | None = None) -> list[int]:
    """The ``top_steerable`` most steerable features by steer-score's ``scores``, or else ``random`` (16) random
    ones among ``live`` (all features when None)."""
    if not top_steerable:
        pool = torch.arange(d_sae) if live is None else live
        if len(pool) == 0:
            raise SaeVitError("No feature of this SAE fires on these images; pass --features or --include-dead.")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[: random or 16]
        return pool[order].tolist()
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
                progress: Callable | None = None, include_dead: bool = False) -> dict:
    """Top-activating images, patch heatmaps, density and text labels for features of one SAE; writes the
    tiles (image | heatmap) under ``out/tiles``, ``features.csv`` and the feature browser ``index.html``.
    Random features are drawn among those that fire on the images unless ``include_dead``. Returns paths and
    the table."""
    import pandas as pd

    from sae_vit.analysis.common import check_sae_matches, concept_vocabulary, load_model, load_probe_images
    from sae_vit.analysis.report import write_feature_browser
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
    try:  # read before the scan, so a bad --vocab or --text-embeddings is refused before any work
        words, text = concept_vocabulary(bundle, vocab)
    except SaeVitError:  # no text head for this model: labels are left out, not an error ...
        if text_embeddings is not None or vocab is not None:
            raise  # ... unless the user gave the words or their embeddings
        words = text = None
    items = open_source(images, world, n=n_images, seed=seed, split="val").items[:n_images]
    batches = lambda: _image_batches(items, bundle.backbone.transform, batch_size)  # noqa: E731
    if features is None:
        live = None if include_dead or top_steerable else live_features(bundle.backbone, model_sae, batches)
        features = pick_features(c.d_sae, scores, steer_csv, top_steerable, random, seed, live)
    found = collect(bundle.backbone, model_sae, batches, features, k=k, progress=progress)
    if words is None:
        labels = None
    else:
        probe = load_probe_images(bundle.backbone, images, world, n_images=32, seed=seed + 1)
        labels = text_labels(bundle.backbone, model_sae, features, probe, words, text.to(device))
    out.mkdir(parents=True, exist_ok=True)
    rows = _feature_entries(out, found, features, labels, scores, items)
    table = found.to_frame()
    table["image_id"] = [items[i].id for i in table["image"]]
    write_csv(out / "features.csv", table)
    title = f"{path} — layer {c.layer} {c.site}, SAE reads {c.tokens} tokens, {found.n_images} images"
    index = write_feature_browser(out, rows, title, found.tokens)
    return {"out": out, "index": index, "features": rows, "table": table, "inspection": found}


def _feature_entries(out: Path, found: Inspection, features: Sequence[int], labels, scores, items) -> list[dict]:
    """One dict per feature for the browser: feature, density, max_activation, S (steer-score's, NaN when not
    scored), target, labels ``[(word, cosine)]``, labels_text and its tiles per ranking."""
    steer = {} if scores is None else {int(r["index"]): r for _, r in scores.iterrows()}
    ids = [item.id for item in items]
    max_act = found.max_activation()
    rows = []
    for fi, feat in enumerate(features):
        row = steer.get(feat)
        target = None if row is None else str(row["target"])
        lab = clean_labels(labels[fi] if labels else None, target)
        tiles = render_tiles(out / "tiles", feat, found, fi, lambda i: items[i].open(), ids)
        rows.append({"feature": feat, "density": float(found.density[fi]), "max_activation": float(max_act[fi]),
                     "S": float("nan") if row is None else float(row["S"]), "target": target, "labels": lab,
                     "labels_text": ", ".join(w for w, _ in lab), "tiles": tiles})
    return rows
