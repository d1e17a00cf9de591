"""The library functions behind the commands, callable from a notebook with the CLI's arguments.

``saevit cache`` is :func:`cache`, ``saevit train`` is :func:`train`; ``saevit sparsity`` lives in
:mod:`sae_vit.sparsity`. The CLI only parses arguments and renders what these return.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .defaults import DEFAULT_MODEL, default_cache_dir, default_sae_path
from .errors import SaeVitError

#: The layers ``saevit cache`` stores by default on a 12-block model: early, middle and late, including 8
#: (the layer the quick-start trains) and the last block.
DEFAULT_LAYERS = (0, 2, 4, 6, 8, 10, 11)
#: Images the default (synthetic world) cache renders.
DEFAULT_WORLD_IMAGES = 4096
#: Training length when none is given: 10 epochs (the paper's recipe) but at least this many tokens, so that
#: small CLS-only caches still train for enough steps.
MIN_DEFAULT_TOKENS = 1_000_000


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``"4,8"`` -> [4, 8]; ``"all"`` -> every block; ``None`` -> the default layers that exist."""
    if text is None:
        return [layer for layer in DEFAULT_LAYERS if layer < n_layers] or list(range(n_layers))
    if text.strip() == "all":
        return list(range(n_layers))
    try:
        layers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise SaeVitError(f"Could not read --layers {text!r}; give comma-separated integers like 4,8 or 'all'.") from exc
    return layers


def cache(
    images: str | os.PathLike | None = None,
    world: str | None = None,
    out: str | os.PathLike | None = None,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    layers: str | list[int] | None = None,
    site: str = "resid_post",
    tokens: str = "all",
    dtype: str = "float16",
    batch_size: int = 64,
    images_per_shard: int = 1024,
    num_workers: int = 0,
    max_images: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    progress: Callable | None = None,
    precision: str = "fp32",
) -> dict:
    """Cache activations of ``model`` over images (a folder or CSV), or over the synthetic world when
    ``images`` is None. Returns the manifest (with ``path`` added)."""
    from .backbone import load_backbone
    from .cache import write_cache
    from .data import open_source

    out = Path(out) if out is not None else default_cache_dir()
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    backbone = load_backbone(model, weights, device)
    layer_list = layers if isinstance(layers, list) else parse_layers(layers, backbone.n_layers)
    n_world = max_images or DEFAULT_WORLD_IMAGES
    source = open_source(images, world, n=n_world, seed=seed)
    manifest = write_cache(
        backbone, source, out, layer_list, site=site, tokens=tokens, dtype=dtype, batch_size=batch_size,
        images_per_shard=images_per_shard, num_workers=num_workers, max_images=max_images,
        overwrite=overwrite, progress=progress, precision=precision,
    )
    return {**manifest, "path": str(out)}


def train(
    layer: int | str | list[int],
    tokens: str = "all",
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    config=None,
    n_tokens: int | None = None,
    epochs: float | None = None,
    overwrite: bool = False,
    progress: Callable | None = None,
):
    """Train one SAE on ``layer`` / ``tokens`` of a cache and save it. Returns ``(sae, path)``.

    ``config`` is a :class:`sae_vit.train.TrainConfig`; training length is ``n_tokens``, or ``epochs`` passes
    over the training split, or by default 10 epochs but at least ``MIN_DEFAULT_TOKENS`` tokens.

    Several layers (``"2,5,8"`` or a list) and/or token types (``"cls,patches"``) train one SAE per combination
    from one pass over the cache (:func:`sae_vit.multi.train_many`) and return a list of ``(sae, path)``;
    ``out`` is then a folder (default: the working folder's ``saes``) holding ``layer_{L}/{tokens}/...``, and
    ``progress`` receives ``(index, state)``. Under ``torchrun`` every rank trains (DistributedDataParallel on
    disjoint slices of the batches) and rank 0 evaluates and saves.
    """
    from .cache import CacheReader
    from .train import TrainConfig, train_sae

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if isinstance(layer, str):
        layers = CacheReader(cache_dir).layers if layer.strip() == "all" else parse_layers(layer, 10**6)
    else:
        layers = [layer] if isinstance(layer, int) else list(layer)
    token_types = [t.strip() for t in tokens.split(",") if t.strip()]
    if not layers or not token_types:
        raise SaeVitError("Give at least one --layer and one --tokens type, e.g. --layer 8 --tokens cls.")
    cfg = config or TrainConfig()
    if len(layers) * len(token_types) != 1:
        from .multi import Job, train_many

        reader = CacheReader(cache_dir)
        site = reader.manifest["site"]
        root = Path(out) if out is not None else None
        jobs = [Job(lay, t, cfg, default_sae_path(lay, t, site, root)) for lay in layers for t in token_types]
        return train_many(cache_dir, jobs, n_tokens, epochs, overwrite, progress)
    layer, tokens = layers[0], token_types[0]
    reader = CacheReader(cache_dir)
    reader.check(layer, tokens)
    site = reader.manifest["site"]
    out = Path(out) if out is not None else default_sae_path(layer, tokens, site)
    if out.exists() and not overwrite:
        raise SaeVitError(f"{out} already exists; pass --overwrite to replace it or choose another --out.")
    n_train = reader.count(layer, tokens, "train")
    if reader.count(layer, tokens, "eval") == 0:
        raise SaeVitError(
            f"The cache at {cache_dir} holds no held-out image (every 20th image is held out for evaluation); "
            "cache at least 20 images."
        )
    if n_tokens is None:
        n_tokens = int(epochs * n_train) if epochs is not None else max(10 * n_train, MIN_DEFAULT_TOKENS)
    batch_size = min(cfg.batch_size, max(1, n_train))
    cfg = replace(cfg, n_tokens=n_tokens, batch_size=batch_size)
    # Every rank reads the same shuffled batches; train_sae keeps each rank's disjoint slice.
    batches = reader.batches(layer, tokens, batch_size, "train", seed=cfg.seed, epochs=n_tokens / n_train)
    rank = int(os.environ.get("RANK", "0"))
    eval_acts = reader.load(layer, tokens, "eval", max_tokens=200_000, seed=cfg.seed) if rank == 0 else None
    init_acts = reader.sample(layer, tokens, 50_000, "train", seed=cfg.seed)
    extra = {"model": reader.manifest["model"], "layer": layer, "site": site, "tokens": tokens}
    sae = train_sae(batches, reader.d_model, cfg, eval_acts=eval_acts, init_acts=init_acts,
                    sae_config_extra=extra, progress=progress)
    sae.cfg.training.update({"cache": str(cache_dir), "cache_weights": reader.manifest["weights"]})
    path = sae.save(out, overwrite=overwrite) if rank == 0 else out
    return sae, path


def load_probe_images(backbone, images: str | os.PathLike | None = None, world: str | None = None,
                      n_images: int = 64, seed: int = 1):
    """Preprocessed probe images [N, 3, H, W] from a folder / CSV, or the synthetic world (test split)."""
    import torch

    from .data import open_source

    source = open_source(images, world, n=n_images, seed=seed, split="val")
    tensors = []
    for item in source.items[:n_images]:
        try:
            tensors.append(backbone.transform(item.open()))
        except (OSError, ValueError, SyntaxError):
            continue
    if not tensors:
        raise SaeVitError(f"No readable probe images in {source.location}; pass --images with images.")
    return torch.stack(tensors).to(backbone.device)


def text_head_and_vocabulary(backbone, vocab: str | os.PathLike | None = None,
                             text_embeddings: str | os.PathLike | None = None,
                             weights: str | os.PathLike | None = None):
    """``(words, unit embeddings [V, d])``: the names of an embeddings file (or ``vocab``'s words looked up in
    it), or a word list embedded by the model's text tower (toy, or open_clip for real CLIP), or by default the
    toy world's concept words."""
    from .steer import check_vocabulary, default_vocabulary
    from .text import TextHead

    head = TextHead.for_model(backbone.name, weights, text_embeddings)
    if vocab is not None:
        words = _read_words(vocab)
    elif head.names is not None:
        words = head.names
    else:
        words = default_vocabulary(backbone)
    check_vocabulary(words, head.vocab)
    return words, head.embed_concepts(words, templates=("{}",))


def _read_words(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise SaeVitError(f"Vocabulary file {p} does not exist; pass a text file with one word per line.")
    words = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not words:
        raise SaeVitError(f"Vocabulary file {p} is empty; put one word per line.")
    return list(dict.fromkeys(words))


def find_saes(saes: list[str | os.PathLike] | None) -> list:
    """SAE arguments (files, folders, hf:// URIs) -> local checkpoint paths; default: the working folder."""
    from .defaults import default_sae_dir
    from .sae import resolve_sae_path

    if not saes:
        root = default_sae_dir()
        found = sorted(root.rglob("*.safetensors")) if root.is_dir() else []
        if not found:
            raise SaeVitError(f"No SAEs in {root}; train one with `saevit train --layer 8 --tokens cls` or pass --sae.")
        return found
    paths = []
    for s in saes:
        p = Path(str(s))
        if not str(s).startswith("hf://") and p.is_dir() and not (p / "sae.safetensors").is_file():
            paths.extend(sorted(p.rglob("*.safetensors")))
        else:
            paths.append(resolve_sae_path(s))
    return paths


def steer_score(
    saes: list[str | os.PathLike] | None = None,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    vocab: str | os.PathLike | None = None,
    text_embeddings: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    world: str | None = None,
    n_images: int = 64,
    config=None,
    features: list[int] | None = None,
    max_features: int | None = 256,
    neurons: bool = True,
    mlp_neurons: bool = False,
    random_control: int = 0,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: Callable | None = None,
) -> list:
    """Score every SAE in ``saes`` (default: the working folder's); write ``steer_<layer>_<tokens>.csv`` per
    SAE, ``steer_summary.csv`` and a PNG of S against strength under ``out``. Returns the reports."""
    import json

    import pandas as pd

    from .backbone import load_backbone
    from .cache import write_json_atomic
    from .defaults import workdir
    from .sae import SAE
    from .steer import plot_curves
    from .steer import steer_score as score

    out = Path(out) if out is not None else workdir() / "steer"
    if (out / "steer_summary.csv").exists() and not overwrite:
        raise SaeVitError(f"{out} already holds steer-score results; pass --overwrite or choose another --out.")
    paths = find_saes(saes)
    loaded = [(p, SAE.load(p, device)) for p in paths]
    model = model or loaded[0][1].cfg.model or DEFAULT_MODEL
    backbone = load_backbone(model, weights, device)
    words, text = text_head_and_vocabulary(backbone, vocab, text_embeddings, weights)
    probe = load_probe_images(backbone, images, world, n_images, seed=seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    reports, summary_rows = [], []
    for path, sae in loaded:
        report = score(sae, backbone, probe, words, text.to(device), config, features, max_features, neurons,
                       mlp_neurons, random_control, seed, str(path), progress)
        stem = f"steer_layer{sae.cfg.layer}_{sae.cfg.site}_{sae.cfg.tokens}"
        tmp = out / f".{stem}.csv.tmp"
        report.units.to_csv(tmp, index=False)
        os.replace(tmp, out / f"{stem}.csv")
        write_json_atomic(out / f"{stem}.json", report.summary)
        plot_curves(report.units, out / f"{stem}.png")
        for kind, k in report.summary["kinds"].items():
            summary_rows.append({"layer": sae.cfg.layer, "site": sae.cfg.site, "tokens": sae.cfg.tokens, "kind": kind,
                                 **k, "strengths": json.dumps(report.summary["strengths"][kind]), "sae": str(path)})
        reports.append(report)
    tmp = out / ".steer_summary.csv.tmp"
    pd.DataFrame(summary_rows).to_csv(tmp, index=False)
    os.replace(tmp, out / "steer_summary.csv")
    return reports


def inspect(
    sae: str | os.PathLike | None = None,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    world: str | None = None,
    n_images: int = 1024,
    features: list[int] | None = None,
    top_steerable: int | None = None,
    random: int | None = None,
    k: int = 16,
    vocab: str | os.PathLike | None = None,
    text_embeddings: str | os.PathLike | None = None,
    steer_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 64,
    overwrite: bool = False,
    device: str = "cpu",
    progress: Callable | None = None,
) -> dict:
    """Top-activating images, patch heatmaps, density and text labels for features of one SAE; writes one PNG
    per feature, ``features.csv`` and a static ``index.html`` under ``out``. Returns paths and the table."""
    import pandas as pd
    import torch

    from .backbone import load_backbone
    from .data import ImageDataset, collate_skip_unreadable, open_source
    from .defaults import workdir
    from .inspection import collect, render_feature, text_labels, write_index
    from .sae import SAE

    path = find_saes([sae] if sae else None)[0]
    model_sae = SAE.load(path, device)
    c = model_sae.cfg
    backbone = load_backbone(model or c.model or DEFAULT_MODEL, weights, device)
    from .steer import check_sae_matches

    check_sae_matches(model_sae, backbone, path)
    out = Path(out) if out is not None else workdir() / "inspect" / f"layer_{c.layer}_{c.site}_{c.tokens}"
    if (out / "index.html").exists() and not overwrite:
        raise SaeVitError(f"{out} already holds an inspection; pass --overwrite or choose another --out.")
    steer_dir = Path(steer_dir) if steer_dir is not None else workdir() / "steer"
    steer_csv = steer_dir / f"steer_layer{c.layer}_{c.site}_{c.tokens}.csv"
    targets: dict[int, str] = {}
    if steer_csv.is_file():
        scores = pd.read_csv(steer_csv)
        scores = scores[scores["kind"] == "feature"]
        targets = dict(zip(scores["index"].astype(int), scores["target"], strict=True))
    if features is None:
        if top_steerable:
            if not targets:
                raise SaeVitError(f"No steer-score results for this SAE in {steer_dir}; run `saevit steer-score` "
                                  "first or pass --features / --random.")
            best = scores[scores["steerable"]].sort_values("S", ascending=False)
            features = best["index"].astype(int).head(top_steerable).tolist()
            if not features:
                raise SaeVitError(f"No steerable features in {steer_csv}; pass --features or --random instead.")
        else:
            g = torch.Generator().manual_seed(seed)
            features = torch.randperm(c.d_sae, generator=g)[: random or 16].tolist()
    source = open_source(images, world, n=n_images, seed=seed, split="val")
    items = source.items[:n_images]

    def batches():
        loader = torch.utils.data.DataLoader(ImageDataset(items, backbone.transform), batch_size=batch_size,
                                             collate_fn=collate_skip_unreadable)
        for index, batch, _bad in loader:
            if batch is not None:
                yield torch.tensor(index), batch

    found = collect(backbone, model_sae, batches, features, k=k, batch_size=batch_size, progress=progress)
    labels: list[list[tuple[str, float]]] | None = None
    try:
        words, text = text_head_and_vocabulary(backbone, vocab, text_embeddings, weights)
    except SaeVitError:
        words = None  # no text head for this model: labels are left out, not an error
    if words is not None:
        probe = load_probe_images(backbone, images, world, n_images=32, seed=seed + 1)
        labels = text_labels(backbone, model_sae, features, probe, words, text.to(device))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fi, feat in enumerate(features):
        lab = labels[fi] if labels else []
        if feat in targets:
            lab = [(f"steer: {targets[feat]}", float("nan"))] + lab
        png = render_feature(out / f"feature_{feat}.png", feat, found, fi, lambda i: items[i].open(), lab)
        rows.append({"feature": feat, "density": float(found.density[fi]), "png": png.name,
                     "labels": ", ".join(w for w, _ in lab)})
    table = found.to_frame()
    table["image_id"] = [items[i].id for i in table["image"]]
    tmp = out / ".features.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / "features.csv")
    index = write_index(out, rows, f"{path} — layer {c.layer} {c.site} {c.tokens}, {found.n_images} images")
    return {"out": out, "index": index, "features": rows, "table": table, "inspection": found}
