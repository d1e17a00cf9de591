"""Targeted suppression: remove a spurious attribute from CLIP's vision tower by zeroing SAE features.

The procedure (docs/suppress.md, ../PAPER.md §3), with selection kept away from the test split:

1. **Rank** (train split): each SAE feature's image-level activation (mean over the tokens the SAE reads) is
   scored by its association with the spurious attribute: ``mean_diff`` (difference of means between
   attribute-present and -absent images over their pooled standard deviation), ``auroc`` (|AUROC − ½|·2) or
   ``text`` (how much adding the feature's decoder direction moves the image embedding toward query words).
   By default the score is computed within each target class and averaged, so a feature that only tracks the
   target (which the spurious attribute is correlated with in train) does not rank high.
2. **Choose** the layer and the number of suppressed features N on the validation split: highest worst-group
   accuracy, ties broken by average accuracy, then the smaller N.
3. **Evaluate** on the test split: zero-shot (class prompts through the :class:`~sae_vit.text.TextHead`) and a
   linear probe on the image embedding trained on the (unedited) train split; accuracy per group, average
   (plain over images, and weighted by the train group proportions, as group_DRO reports it) and worst group.

Suppression zeroes the chosen latents at every token the SAE reads, through :func:`~sae_vit.backbone.splice`
and :meth:`SAE.edit <sae_vit.sae.SAE.edit>` (so the SAE's reconstruction error is kept). Baselines: no
intervention; N random live features; projecting out the spurious direction of a (group-balanced) linear
probe on the activations at the SAE's hook.

Speed: per batch of images, the residual before each layer is computed once (:meth:`Backbone.capture`, one
pass for every layer) and each condition runs only that layer's block and the ones after it
(:meth:`Backbone.forward_from`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.common import check_sae_matches, class_embeddings, load_model, zero_shot_logits
from sae_vit.core import edits
from sae_vit.core.backbone import Backbone, splice
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE
from sae_vit.core.text import DEFAULT_TEMPLATES, TextHead

TASKS = ("waterbirds", "celeba", "csv")
RANKINGS = ("mean_diff", "auroc", "text")
EVALS = ("zero_shot", "probe")
METHODS = ("none", "sae", "random", "projection")
DEFAULT_N_FEATURES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
OUTPUT_FILES = ("suppress_table.csv", "suppress_sweep.csv", "suppress_features.csv", "suppress_summary.json",
                "suppress_worst_by_layer.png")


@dataclass(frozen=True)
class SuppressConfig:
    """How to rank, select and evaluate; the defaults are the documented method."""

    n_features: tuple[int, ...] = DEFAULT_N_FEATURES
    """Numbers of top-ranked features to suppress (the N sweep)."""
    ranking: str = "mean_diff"
    """``mean_diff`` (standardised difference of means), ``auroc``, or ``text`` (needs ``text_query``)."""
    within_class: bool = True
    """Score association with the spurious attribute within each target class, then average over classes."""
    text_query: tuple[str, ...] = ()
    """Words naming the spurious attribute's values (e.g. water, land) for ``ranking='text'``."""
    n_random: int = 3
    """Draws of N random live features at the chosen layer and N, on test (the random baseline is their mean)."""
    probe: bool = True
    """Also evaluate with a linear probe on the image embedding, trained on the train split."""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    """Zero-shot prompt templates."""
    probe_l2: float = 1e-3
    """L2 penalty of the logistic-regression probes (on standardised features)."""
    n_concepts: int = 3
    """Top concept words shown per chosen feature (needs a vocabulary)."""
    n_effect_images: int = 8
    """Train images a feature's decoder direction is added to when finding its concepts."""
    batch_size: int = 64
    """Images per forward pass."""
    seed: int = 0
    """Seeds the random-feature baseline."""


# --------------------------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """A labelled dataset with a binary spurious attribute, in the readers' layout."""

    frame: object
    """pandas DataFrame: ``path``, ``label`` (int), ``spurious`` (0/1), ``split`` (train/val/test), ``group``."""
    classes: list[str]
    """Zero-shot class prompts, in label order (``a|b`` averages the prompts of several names)."""
    target: str
    spurious: str
    group_names: dict[int, str] = field(default_factory=dict)
    """Group id (``n_spurious · label + spurious``) → readable name."""


def _binary(values, column: str, source) -> tuple[object, list[str]]:
    uniq = sorted(values.dropna().unique().tolist(), key=str)
    if len(uniq) != 2:
        raise SaeVitError(f"Spurious column {column!r} of {source} has {len(uniq)} distinct values "
                          f"({uniq[:5]}); suppression needs a binary attribute, pick another --spurious.")
    if set(uniq) == {0, 1}:
        return values.astype(int), ["0", "1"]
    return values.map({uniq[0]: 0, uniq[1]: 1}).astype(int), [str(u) for u in uniq]


def read_task(data: str | os.PathLike, task: str, target: str | None = None, spurious: str | None = None,
              classes: Sequence[str] | None = None, model: str = "toy") -> TaskData:
    """Read a dataset with the real-layout readers of :mod:`sae_vit.datasets`.

    ``waterbirds``: target ``y`` (the label), spurious ``place``; ``celeba``: attributes (default Blond_Hair,
    spurious Male); ``csv``: a CSV file (or a folder holding ``metadata.csv``) with ``path``, the ``target``
    column, the ``spurious`` column and ``split``.
    """
    from sae_vit.io import datasets

    if task not in TASKS:
        raise SaeVitError(f"Unknown --task {task!r}; use one of: {', '.join(TASKS)}.")
    root = Path(data)
    if not root.exists():
        raise SaeVitError(f"Data path {root} does not exist; pass the dataset folder (or CSV) with --data.")
    names = None
    if task == "waterbirds":
        frame = datasets.read_waterbirds(root)
        if target not in (None, "y", "label"):
            raise SaeVitError(f"Waterbirds has one target, y (not {target!r}); drop --target or pass --target y.")
        spurious = spurious or "place"
        if spurious not in frame.columns:
            raise SaeVitError(f"Waterbirds metadata has no column {spurious!r}; use --spurious place.")
        target = "y"
        frame["spurious"] = frame[spurious].astype(int)
    elif task == "celeba":
        target, spurious = target or "Blond_Hair", spurious or "Male"
        frame = datasets.read_celeba(root, target, spurious)
    else:
        csv = root / "metadata.csv" if root.is_dir() else root
        if spurious is None:
            raise SaeVitError("--task csv needs --spurious COLUMN naming the binary spurious attribute.")
        target = target or "label"
        frame = datasets.read_csv_labels(csv, label_col=target, group_cols=(spurious,), path_col=_path_column(csv),
                                         default_split="train")
        frame["spurious"], names = _binary(frame[spurious], spurious, csv)
    frame = frame.reset_index(drop=True)
    for split in ("train", "val", "test"):
        if not (frame["split"] == split).any():
            raise SaeVitError(f"{root} has no {split} images; suppression needs train (ranking), val (selection) "
                              "and test (evaluation) splits.")
    train = frame[frame["split"] == "train"]
    if train["spurious"].nunique() < 2:
        raise SaeVitError(f"The train split of {root} has only one value of {spurious!r}; features cannot be ranked "
                          "by association with it.")
    frame["group"] = 2 * frame["label"] + frame["spurious"]
    n_classes = int(frame["label"].max()) + 1
    label_names = _label_names(frame, n_classes)
    spur_names = names or ["0", "1"]
    group_names = {2 * y + s: f"{target}={label_names[y]}, {spurious}={spur_names[s]}"
                   for y in range(n_classes) for s in (0, 1)}
    if classes is None:
        classes = default_classes(task, target, model, label_names)
    classes = list(classes)
    if len(classes) != n_classes:
        raise SaeVitError(f"--classes gives {len(classes)} prompts but {target!r} has {n_classes} classes; "
                          "give one prompt per class, in label order.")
    return TaskData(frame, classes, target, spurious, group_names)


def _path_column(csv: Path) -> str:
    """The image-path column of a CSV: ``path``, or another name :mod:`sae_vit.data` accepts."""
    import pandas as pd

    from sae_vit.io.images import CSV_PATH_COLUMNS

    if not csv.is_file():
        raise SaeVitError(f"CSV index {csv} does not exist; pass --data with a CSV file or a folder holding "
                          "metadata.csv.")
    columns = pd.read_csv(csv, nrows=0).columns
    return next((c for c in CSV_PATH_COLUMNS if c in columns), "path")


def _label_names(frame, n_classes: int) -> list[str]:
    if "label_name" in frame.columns:
        pairs = frame.drop_duplicates("label").set_index("label")["label_name"].to_dict()
        return [str(pairs.get(i, i)) for i in range(n_classes)]
    return [str(i) for i in range(n_classes)]


def default_classes(task: str, target: str, model: str, label_names: Sequence[str]) -> list[str]:
    """Zero-shot class prompts when ``--classes`` is not given."""
    toy = model == "toy"
    if task == "waterbirds":
        return ["car", "boat"] if toy else ["landbird", "waterbird"]
    if task == "celeba":
        if toy and target == "Yellow":
            return ["red|orange|green|blue|purple", "yellow"]
        if not toy and target == "Blond_Hair":
            return ["person with dark hair", "person with blond hair"]
        raise SaeVitError(f"No default zero-shot prompts for target {target!r}; pass --classes 'not x,x'.")
    if all(not n.isdigit() for n in label_names):
        return list(label_names)
    raise SaeVitError(f"The labels of {target!r} are numbers; pass --classes with one prompt per class.")


class ImageBatches:
    """Preprocessed images of a list of paths, loaded lazily one batch at a time."""

    def __init__(self, paths: Sequence[str], transform: Callable, batch_size: int):
        self.paths, self.transform, self.batch_size = list(paths), transform, batch_size

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        from PIL import Image

        for start in range(0, len(self.paths), self.batch_size):
            batch = []
            for p in self.paths[start:start + self.batch_size]:
                try:
                    with Image.open(p) as im:
                        batch.append(self.transform(im.convert("RGB")))
                except (OSError, ValueError, SyntaxError) as exc:
                    raise SaeVitError(f"Could not read image {p} ({type(exc).__name__}); fix or remove it "
                                      "from the dataset index.") from exc
            yield torch.stack(batch)


# --------------------------------------------------------------------------------------------- model


def check_saes(saes: Sequence[SAE], paths: Sequence, backbone: Backbone) -> dict[int, tuple[SAE, str]]:
    """SAEs keyed by layer; each must fit the backbone, and one layer may have only one SAE."""
    by_layer: dict[int, tuple[SAE, str]] = {}
    for sae, path in zip(saes, paths, strict=True):
        check_sae_matches(sae, backbone, path)
        if sae.cfg.layer in by_layer:
            raise SaeVitError(f"Two SAEs for layer {sae.cfg.layer} ({by_layer[sae.cfg.layer][1]} and {path}); "
                              "pass one SAE per layer or pick layers with --layers.")
        by_layer[sae.cfg.layer] = (sae, str(path))
    if backbone.n_prefix != int(backbone.has_cls):
        raise SaeVitError(f"{backbone.name} has register tokens; suppress supports ViTs without registers.")
    return dict(sorted(by_layer.items()))


# --------------------------------------------------------------------------------------------- probes


class LinearProbe(NamedTuple):
    """Multinomial logistic regression on standardised inputs."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    """[C, d] in standardised units."""
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def direction(self) -> Tensor:
        """Unit direction in the input space that separates class 1 from class 0 (binary probes)."""
        w = self.weight[1] - self.weight[0]
        return F.normalize(w / self.std, dim=0)


def fit_logistic(x: Tensor, y: Tensor, sample_weight: Tensor | None = None, l2: float = 1e-3,
                 max_iter: int = 200) -> LinearProbe:
    """Fit a logistic regression (L-BFGS) on ``x`` [n, d] with integer labels ``y`` [n]."""
    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    n_classes = max(int(y.max()) + 1, 2)
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    sw = torch.ones(len(y)) if sample_weight is None else sample_weight.float()
    sw = sw / sw.sum()
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.cross_entropy(z @ w.T + b, y, reduction="none") * sw).sum() + l2 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(mean, std, w.detach(), b.detach())


def balanced_weights(group: Tensor) -> Tensor:
    """Per-sample weights that give every present group the same total weight."""
    counts = torch.bincount(group)
    return 1.0 / counts[group].float()


# --------------------------------------------------------------------------------------------- ranking


@dataclass
class LayerStats:
    """Train-split statistics of one SAE's latents, pooled per image (mean over the SAE's tokens)."""

    count: Tensor
    """[n_classes, 2] images per (target class, spurious value)."""
    total: Tensor
    """[n_classes, 2, d_sae] sum of pooled activations."""
    total_sq: Tensor
    """[n_classes, 2, d_sae] sum of squared pooled activations."""
    fired: Tensor
    """[d_sae] images on which the feature fired at some token."""
    max_act: Tensor
    """[d_sae] largest activation at any token."""
    pooled: list = field(default_factory=list)
    """Pooled activations per batch (float16), kept only for AUROC."""
    site_pooled: list = field(default_factory=list)
    """Pooled hook activations per batch [b, d_site] (for the projection baseline's probe)."""
    site_sum: Tensor | None = None
    site_tokens: int = 0


def _update_stats(st: LayerStats, sae: SAE, acts: Tensor, label: Tensor, spur: Tensor, keep_pooled: bool) -> None:
    f = sae.encode(acts)  # [b, T_sel, d_sae]
    pooled = f.mean(dim=1)
    idx = label * 2 + spur
    n_classes = st.count.shape[0]
    st.count += torch.bincount(idx, minlength=2 * n_classes).view(n_classes, 2)
    st.total += torch.zeros(2 * n_classes, pooled.shape[1]).index_add_(0, idx, pooled).view(n_classes, 2, -1)
    st.total_sq += torch.zeros(2 * n_classes, pooled.shape[1]).index_add_(0, idx, pooled**2).view(n_classes, 2, -1)
    st.fired += (f.amax(dim=1) > 0).sum(0)
    st.max_act = torch.maximum(st.max_act, f.amax(dim=(0, 1)))
    if keep_pooled:
        st.pooled.append(pooled.half())
    st.site_pooled.append(acts.mean(dim=1))
    st.site_sum = acts.sum(dim=(0, 1)) if st.site_sum is None else st.site_sum + acts.sum(dim=(0, 1))
    st.site_tokens += acts.shape[0] * acts.shape[1]


def mean_diff_scores(st: LayerStats, within_class: bool = True) -> Tensor:
    """|standardised difference of means| between spurious present and absent, [d_sae]."""
    count, total, total_sq = st.count.float(), st.total, st.total_sq
    if not within_class:
        count, total, total_sq = count.sum(0, keepdim=True), total.sum(0, keepdim=True), total_sq.sum(0, keepdim=True)
    n = count[..., None].clamp_min(1)
    mean = total / n
    var = (total_sq / n - mean**2).clamp_min(0)
    d = (mean[:, 1] - mean[:, 0]) / torch.sqrt((var[:, 1] + var[:, 0]) / 2 + 1e-8)
    usable = (count[:, 0] > 1) & (count[:, 1] > 1)
    if not usable.any():
        raise SaeVitError("No target class of the train split has images both with and without the spurious "
                          "attribute; rank with --no-within-class.")
    return d[usable].abs().mean(0)


def auroc(values: Tensor, positive: Tensor) -> Tensor:
    """AUROC of each column of ``values`` [n, d] for the boolean ``positive`` [n] (ties count one half)."""
    v = values.float().T.contiguous()  # [d, n]
    s = v.sort(dim=1).values
    left = torch.searchsorted(s, v, right=False).float()
    right = torch.searchsorted(s, v, right=True).float()
    ranks = (left + right + 1) / 2  # 1-based average ranks
    n1 = positive.sum().float()
    n0 = len(positive) - n1
    return (ranks[:, positive].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def auroc_scores(st: LayerStats, label: Tensor, spur: Tensor, within_class: bool = True) -> Tensor:
    """|AUROC − ½| · 2 of the pooled activation for the spurious attribute, [d_sae]."""
    pooled = torch.cat(st.pooled).float()
    subsets = [label == y for y in label.unique()] if within_class else [torch.ones_like(label, dtype=torch.bool)]
    scores = [(auroc(pooled[m], spur[m].bool()) - 0.5).abs() * 2 for m in subsets
              if 0 < int(spur[m].sum()) < int(m.sum())]
    if not scores:
        raise SaeVitError("No target class of the train split has images both with and without the spurious "
                          "attribute; rank with --no-within-class.")
    return torch.stack(scores).mean(0)


def feature_effects(backbone: Backbone, sae: SAE, layer: int, prev: Tensor, features: Tensor, strengths: Tensor,
                    chunk_rows: int = 512) -> Tensor:
    """Change of the unit image embedding when each feature is raised by its strength at every token the SAE
    reads: ``prev`` [n, T, d] residual before ``layer``; returns Δê averaged over the n images, [m, d_emb]."""
    n = prev.shape[0]
    with torch.no_grad():
        base = F.normalize(backbone.forward_from(layer - 1, prev).float(), dim=-1)
        out = []
        per = max(1, chunk_rows // n)
        for start in range(0, len(features), per):
            idx, s = features[start:start + per], strengths[start:start + per]
            add = torch.zeros(len(idx) * n, 1, sae.cfg.d_sae)
            add[torch.arange(len(idx) * n), 0, idx.repeat_interleave(n)] = s.repeat_interleave(n)
            with splice(backbone, layer, edits.add(sae, add), sae.cfg.site, sae.cfg.tokens):
                emb = backbone.forward_from(layer - 1, prev.repeat(len(idx), 1, 1))
            out.append((F.normalize(emb.float(), dim=-1).view(len(idx), n, -1) - base).mean(1))
    return torch.cat(out)


def concept_words(effects: Tensor, words: Sequence[str], word_emb: Tensor, k: int) -> list[str]:
    """Top-``k`` words per effect [m, d] by cosine with the (mean-centred) word embeddings."""
    centred = F.normalize(word_emb - word_emb.mean(0), dim=-1)
    sims = F.normalize(effects, dim=-1) @ centred.T
    top = sims.topk(min(k, len(words)), dim=1).indices
    return [", ".join(words[j] for j in row) for row in top.tolist()]


# --------------------------------------------------------------------------------------------- evaluation


class Condition(NamedTuple):
    """One forward-pass variant: ``method`` at ``layer`` with ``n`` features (draw ``draw`` for random)."""

    method: str
    layer: int = -1
    n: int = 0
    draw: int = 0


def run_conditions(backbone: Backbone, batches: ImageBatches, conditions: Sequence[Condition],
                   edits: Callable[[Condition], tuple[Callable, str, str]],
                   progress: Callable[[str, int, int], None] | None = None, what: str = "") -> dict[Condition, Tensor]:
    """Image embeddings [n, d_emb] of every condition. The residual before each layer is captured once per
    batch; each edited condition re-runs only its layer's block (inside :func:`splice`) and those after it."""
    layers = sorted({c.layer for c in conditions if c.method != "none"})
    prev_layers = sorted({layer - 1 for layer in layers if layer > 0})
    out: dict[Condition, list[Tensor]] = {c: [] for c in conditions}
    done = 0
    with torch.no_grad():
        for images in batches:
            images = images.to(backbone.device)
            caps = backbone.capture(images, prev_layers, "resid_post", "all") if prev_layers else {}
            if 0 in layers:
                caps[-1] = backbone.embed(images)
            for c in conditions:
                if c.method == "none":
                    out[c].append(backbone.image_embedding(images).float().cpu())
                    continue
                edit, site, tokens = edits(c)
                with splice(backbone, c.layer, edit, site, tokens):
                    out[c].append(backbone.forward_from(c.layer - 1, caps[c.layer - 1]).float().cpu())
            done += len(images)
            if progress:
                progress(what, done, len(batches))
    return {c: torch.cat(v) for c, v in out.items()}


def group_metrics(pred: Tensor, label: Tensor, group: Tensor, train_share: dict[int, float]) -> dict[str, float]:
    """Accuracy per group (``acc_g{id}``), ``avg`` (mean over images), ``avg_weighted`` (group accuracies
    weighted by the train split's group proportions, as group_DRO reports) and ``worst`` (worst group)."""
    correct = (pred == label).float()
    out: dict[str, float] = {"avg": float(correct.mean())}
    accs = {}
    for g in sorted(group.unique().tolist()):
        accs[g] = float(correct[group == g].mean())
        out[f"acc_g{g}"] = accs[g]
    weights = {g: train_share.get(g, 0.0) for g in accs}
    total = sum(weights.values())
    out["avg_weighted"] = (sum(accs[g] * w for g, w in weights.items()) / total) if total else out["avg"]
    out["worst"] = min(accs.values())
    return out


class SuppressResult(NamedTuple):
    """What :func:`run_suppress` returns."""

    table: object
    """DataFrame, one row per (eval, method): the chosen layer and N, validation worst group, and test avg,
    avg_weighted, worst and per-group accuracies (random: mean over draws, with ``worst_std``)."""
    sweep: object
    """DataFrame of every evaluated (eval, method, layer, n, draw, split): val for the full layer × N sweep and
    each layer's projection; test for each layer at its validation-best N, each layer's projection, the
    baseline and the random draws."""
    features: object
    """DataFrame of the suppressed features at each eval's chosen layer: rank, feature, score, density, max
    activation, and top concepts through the text head."""
    summary: dict
    """Chosen layer and N per eval, options, dataset sizes, group names, SAE paths."""


def _split_tensors(frame, split: str) -> tuple[list[str], Tensor, Tensor, Tensor]:
    part = frame[frame["split"] == split]
    return (part["path"].tolist(), torch.tensor(part["label"].values), torch.tensor(part["spurious"].values),
            torch.tensor(part["group"].values))


def run_suppress(backbone: Backbone, head: TextHead, saes: dict[int, tuple[SAE, str]], task: TaskData,
                 cfg: SuppressConfig = SuppressConfig(), vocab: tuple[list[str], Tensor] | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> SuppressResult:
    """Rank on train, choose (layer, N) on val, evaluate on test; see the module docstring."""
    import pandas as pd

    if cfg.ranking not in RANKINGS:
        raise SaeVitError(f"Unknown ranking {cfg.ranking!r}; use one of: {', '.join(RANKINGS)}.")
    if cfg.ranking == "text" and not cfg.text_query:
        raise SaeVitError("--ranking text needs --text-query with words for the spurious attribute, e.g. water,land.")
    if not cfg.n_features or min(cfg.n_features) < 1:
        raise SaeVitError("--n-features must list positive integers, e.g. 1,2,4,8.")
    frame = task.frame
    evals = ["zero_shot"] + (["probe"] if cfg.probe else [])
    class_emb = class_embeddings(head, task.classes, cfg.templates).to(backbone.device)
    layers = list(saes)
    n_classes = len(task.classes)

    # -- 1. train split: latent statistics, probes ------------------------------------------------
    paths, label, spur, group = _split_tensors(frame, "train")
    share = {int(g): float(c) / len(group) for g, c in zip(*group.unique(return_counts=True), strict=True)}
    stats = {layer: LayerStats(torch.zeros(n_classes, 2, dtype=torch.long), torch.zeros(n_classes, 2, sae.cfg.d_sae),
                               torch.zeros(n_classes, 2, sae.cfg.d_sae), torch.zeros(sae.cfg.d_sae),
                               torch.zeros(sae.cfg.d_sae)) for layer, (sae, _) in saes.items()}
    keys = sorted({(sae.cfg.site, sae.cfg.tokens) for sae, _ in saes.values()})
    train_emb, effect_prev, start = [], {}, 0
    with torch.no_grad():
        for images in ImageBatches(paths, backbone.transform, cfg.batch_size):
            images = images.to(backbone.device)
            b = slice(start, start + len(images))
            for site, tokens in keys:
                ls = [layer for layer, (sae, _) in saes.items() if (sae.cfg.site, sae.cfg.tokens) == (site, tokens)]
                caps = backbone.capture(images, ls, site, tokens)
                for layer in ls:
                    _update_stats(stats[layer], saes[layer][0], caps[layer].float().cpu(), label[b], spur[b],
                                  cfg.ranking == "auroc")
            if not effect_prev:  # the first images also serve to find the features' concepts
                few = images[: cfg.n_effect_images]
                prev_layers = sorted({layer - 1 for layer in layers if layer > 0})
                effect_prev = backbone.capture(few, prev_layers, "resid_post", "all") if prev_layers else {}
                effect_prev[-1] = backbone.embed(few)
            train_emb.append(backbone.image_embedding(images).float().cpu())
            start += len(images)
            if progress:
                progress("train", start, len(paths))
    train_emb = torch.cat(train_emb)
    target_probe = fit_logistic(train_emb, label, l2=cfg.probe_l2) if cfg.probe else None

    rankings, scores, spur_dirs = {}, {}, {}
    text_query = None
    if cfg.ranking == "text":
        text_query = F.normalize(head.embed(list(cfg.text_query), cfg.templates), dim=-1)
    for layer, (sae, _) in saes.items():
        st = stats[layer]
        if cfg.ranking == "mean_diff":
            sc = mean_diff_scores(st, cfg.within_class)
        elif cfg.ranking == "auroc":
            sc = auroc_scores(st, label, spur, cfg.within_class)
        else:
            alive = (st.fired > 0).nonzero().squeeze(1)
            mean_prev = effect_prev[layer - 1].mean(0, keepdim=True)
            eff = feature_effects(backbone, sae, layer, mean_prev, alive, st.max_act[alive]).cpu()
            sc = torch.zeros(sae.cfg.d_sae)
            sc[alive] = (F.normalize(eff, dim=-1) @ text_query.T.cpu()).amax(1)
        sc = torch.where(st.fired > 0, sc, torch.full_like(sc, -math.inf))  # never pick dead features
        scores[layer] = sc
        rankings[layer] = sc.argsort(descending=True, stable=True)
        site_pooled = torch.cat(st.site_pooled)
        probe = fit_logistic(site_pooled, spur, balanced_weights(group), cfg.probe_l2)
        w = probe.direction()
        spur_dirs[layer] = (w, float((st.site_sum / st.site_tokens) @ w))

    def alive_random(layer: int, n: int, draw: int) -> Tensor:
        alive = (stats[layer].fired > 0).nonzero().squeeze(1)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + layer * 10_007 + n * 101 + draw)
        return alive[torch.randperm(len(alive), generator=g)[: min(n, len(alive))]]

    def condition_edit(c: Condition):
        sae = saes[c.layer][0]
        if c.method == "projection":
            w, mean = spur_dirs[c.layer]
            w = w.to(backbone.device)
            return edits.project(w, mean), sae.cfg.site, sae.cfg.tokens
        idx = rankings[c.layer][: c.n] if c.method == "sae" else alive_random(c.layer, c.n, c.draw)
        return edits.zero(sae, idx), sae.cfg.site, sae.cfg.tokens

    def predict(emb: Tensor, how: str) -> Tensor:
        if how == "zero_shot":
            return zero_shot_logits(emb, class_emb).argmax(1)
        return target_probe.logits(emb).argmax(1)

    rows: list[dict] = []

    def record(embs: dict[Condition, Tensor], split: str, lab: Tensor, grp: Tensor) -> None:
        for c, emb in embs.items():
            for how in evals:
                m = group_metrics(predict(emb, how), lab, grp, share)
                rows.append({"eval": how, "method": c.method, "layer": c.layer, "n": c.n, "draw": c.draw,
                             "split": split, **m})

    # -- 2. validation: the full sweep; choose layer and N ---------------------------------------
    _, vlab, _, vgrp = _split_tensors(frame, "val")
    vpaths = _split_tensors(frame, "val")[0]
    conds = [Condition("none")]
    conds += [Condition("sae", layer, n) for layer in layers for n in cfg.n_features]
    conds += [Condition("projection", layer) for layer in layers]
    record(run_conditions(backbone, ImageBatches(vpaths, backbone.transform, cfg.batch_size), conds, condition_edit,
                          progress, "val"), "val", vlab, vgrp)
    val = pd.DataFrame(rows)
    chosen = {how: _choose(val[(val["eval"] == how) & (val["method"] == "sae")]) for how in evals}
    chosen_proj = {how: _choose(val[(val["eval"] == how) & (val["method"] == "projection")]) for how in evals}
    best_n = {(how, layer): _choose(val[(val["eval"] == how) & (val["method"] == "sae") & (val["layer"] == layer)])[1]
              for how in evals for layer in layers}

    # -- 3. test: baseline, each layer at its best N, projections, random draws -------------------
    tpaths, tlab, _, tgrp = _split_tensors(frame, "test")
    tconds = {Condition("none")}
    tconds |= {Condition("sae", layer, n) for (_, layer), n in best_n.items()}
    tconds |= {Condition("projection", layer) for layer in layers}
    for layer, n in chosen.values():
        tconds |= {Condition("random", layer, n, d) for d in range(cfg.n_random)}
    tconds = sorted(tconds)
    record(run_conditions(backbone, ImageBatches(tpaths, backbone.transform, cfg.batch_size), tconds, condition_edit,
                          progress, "test"), "test", tlab, tgrp)
    sweep = pd.DataFrame(rows)

    table = _table(sweep, evals, chosen, chosen_proj)
    feature_rows = []
    for how, (layer, n) in chosen.items():
        sae = saes[layer][0]
        idx = rankings[layer][:n]
        concepts = [""] * len(idx)
        if vocab is not None:
            eff = feature_effects(backbone, sae, layer, effect_prev[layer - 1], idx, stats[layer].max_act[idx]).cpu()
            concepts = concept_words(eff, vocab[0], vocab[1].cpu(), cfg.n_concepts)
        for r, (f, con) in enumerate(zip(idx.tolist(), concepts, strict=True)):
            feature_rows.append({"eval": how, "layer": layer, "rank": r + 1, "feature": f,
                                 "score": float(scores[layer][f]),
                                 "density": float(stats[layer].fired[f]) / len(paths),
                                 "max_activation": float(stats[layer].max_act[f]), "concepts": con})
    summary = {
        "model": backbone.name, "weights": backbone.weights_id, "target": task.target, "spurious": task.spurious,
        "classes": task.classes, "groups": {str(k): v for k, v in task.group_names.items()},
        "train_group_share": {str(k): v for k, v in share.items()},
        "n_images": {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")},
        "chosen": {how: {"layer": int(layer), "n": int(n)} for how, (layer, n) in chosen.items()},
        "chosen_projection_layer": {how: int(layer) for how, (layer, _) in chosen_proj.items()},
        "layers": layers, "saes": {str(layer): p for layer, (_, p) in saes.items()},
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "text_head": head.source,
    }
    return SuppressResult(table, sweep, pd.DataFrame(feature_rows), summary)


def _choose(val) -> tuple[int, int]:
    """(layer, n) with the best validation worst-group accuracy; ties: higher average, smaller n, lower layer."""
    best = val.sort_values(["worst", "avg", "n", "layer"], ascending=[False, False, True, True]).iloc[0]
    return int(best["layer"]), int(best["n"])


def _table(sweep, evals: list[str], chosen: dict, chosen_proj: dict):
    import pandas as pd

    rows = []
    group_cols = sorted(c for c in sweep.columns if c.startswith("acc_g"))
    for how in evals:
        layer, n = chosen[how]
        player = chosen_proj[how][0]
        picks = [("none", -1, 0), ("sae", layer, n), ("random", layer, n), ("projection", player, 0)]
        for method, lay, nn in picks:
            sel = sweep[(sweep["eval"] == how) & (sweep["method"] == method) & (sweep["layer"] == lay)
                        & (sweep["n"] == nn)]
            val, test = sel[sel["split"] == "val"], sel[sel["split"] == "test"]
            row = {"eval": how, "method": method, "layer": None if lay < 0 else lay, "n": nn or None,
                   "val_worst": float(val["worst"].mean()) if len(val) else float("nan")}
            for col in ("avg", "avg_weighted", "worst", *group_cols):
                row[f"test_{col}"] = float(test[col].mean())
            row["test_worst_std"] = float(test["worst"].std()) if len(test) > 1 else 0.0
            row["draws"] = len(test)
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- outputs


def plot_worst_by_layer(sweep, path) -> Path | None:
    """PNG of worst-group accuracy by layer (SAE suppression at each layer's validation-best N, and the
    projection baseline; no intervention as a line), validation and test, one panel per evaluation."""
    from sae_vit.analysis.common import pyplot
    from sae_vit.core.atomic import save_figure

    plt = pyplot()
    if plt is None:
        return None
    evals = list(dict.fromkeys(sweep["eval"]))
    fig, axes = plt.subplots(1, len(evals), figsize=(5.5 * len(evals), 4), squeeze=False)
    for ax, how in zip(axes[0], evals, strict=True):
        s = sweep[sweep["eval"] == how]
        for split, style in (("val", "--"), ("test", "-")):
            part = s[s["split"] == split]
            sae = part[part["method"] == "sae"].groupby("layer")["worst"].max()
            proj = part[part["method"] == "projection"].set_index("layer")["worst"]
            ax.plot(sae.index, 100 * sae.values, style, marker="o", color="C0", label=f"SAE suppression ({split})")
            ax.plot(proj.index, 100 * proj.values, style, marker="s", color="C2", label=f"probe projection ({split})")
            base = part[part["method"] == "none"]["worst"]
            if len(base):
                ax.axhline(100 * float(base.iloc[0]), linestyle=style, color="grey", linewidth=0.8,
                           label=f"no intervention ({split})")
        ax.set_xlabel("layer")
        ax.set_ylabel("worst-group accuracy (%)")
        ax.set_title(how.replace("_", "-"))
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace earlier results unless ``overwrite``."""
    existing = [f for f in OUTPUT_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise SaeVitError(f"{out} already holds suppress results ({existing[0]}); pass --overwrite or choose "
                          "another --out.")


def write_outputs(result: SuppressResult, out: Path, overwrite: bool = False) -> dict[str, Path | None]:
    """Write the table, sweep and features CSVs, the summary JSON and the PNG atomically under ``out``."""
    from sae_vit.core.atomic import write_csv, write_json

    out = Path(out)
    check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {}
    for name, frame in (("table", result.table), ("sweep", result.sweep), ("features", result.features)):
        written[name] = write_csv(out / f"suppress_{name}.csv", frame)
    written["summary"] = write_json(out / "suppress_summary.json", result.summary)
    written["plot"] = plot_worst_by_layer(result.sweep, out / "suppress_worst_by_layer.png")
    return written


def suppress(
    data: str | os.PathLike,
    task: str,
    saes: Sequence[str | os.PathLike],
    target: str | None = None,
    spurious: str | None = None,
    layers: list[int] | None = None,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    text_embeddings: str | os.PathLike | None = None,
    vocab: str | os.PathLike | None = None,
    config: SuppressConfig = SuppressConfig(),
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[SuppressResult, dict[str, Path | None]]:
    """``saevit suppress``: read the dataset and the SAEs, run :func:`run_suppress`, write the outputs under
    ``out`` (default ``<workdir>/suppress``). Returns the result and the written paths."""
    from sae_vit.analysis.common import read_words
    from sae_vit.core.defaults import workdir
    from sae_vit.io.resolve import find_saes

    out = Path(out) if out is not None else workdir() / "suppress"
    check_out(out, overwrite)
    if not saes:
        raise SaeVitError("No SAEs given; pass --sae with one checkpoint per layer (or a folder of them).")
    paths = find_saes(list(saes))
    loaded = [SAE.load(p) for p in paths]
    model = model or loaded[0].cfg.model or "toy"
    bundle = load_model(model, weights, text_embeddings, device="auto")
    backbone, head = bundle.backbone, bundle.head
    by_layer = check_saes(loaded, paths, backbone)
    if layers is not None and layers != "all":
        wanted = list(layers)
        missing = [layer for layer in wanted if layer not in by_layer]
        if missing:
            raise SaeVitError(f"No SAE for layer {missing[0]} among the --sae files (layers {list(by_layer)}); "
                              "pass an SAE for it or drop it from --layers.")
        by_layer = {layer: by_layer[layer] for layer in wanted}
    task_data = read_task(data, task, target, spurious, classes, backbone.name)
    words = None
    if vocab is not None:
        words = read_words(vocab)
    elif backbone.name == "toy":
        from sae_vit.analysis.common import default_vocabulary

        words = default_vocabulary(backbone)
    elif text_embeddings is not None:
        words = head.names
    vocab_pair = (words, head.embed_concepts(words)) if words else None
    result = run_suppress(backbone, head, by_layer, task_data, config, vocab_pair, progress)
    return result, write_outputs(result, out, overwrite)
