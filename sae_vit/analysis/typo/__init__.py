"""Typographic attacks and their defence by suppressing text-reading SAE features (PAPER.md §3).

Parts, each usable alone: the attack recipe and the image sets it makes (:mod:`.attacks`), the defences (the
SAE's and the baselines') and their zero-shot evaluation (:mod:`.defences`), feature files and the shipped
assets (:mod:`.files`). Here, the world protocol: on the synthetic world, discovery = ``train``, selection of
layer and N = ``val``, reported numbers = ``test``; nothing chosen ever sees the test split. Text features are
SAE features ranked by how much more they fire on attacked images than on the same images without text
(paired, so content is controlled); the baselines are fitted on discovery, tuned on validation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.analysis.common import ModelBundle, check_sae_matches, class_embeddings, load_model, minimize
from sae_vit.analysis.typo.attacks import (
    FAMILIES,
    HELD_OUT,
    SAE_TRAINING_ATTACKS,
    AttackConfig,
    TypoSet,
    open_image,
    pseudo_word,
    render_attack,
    to_rgb,
    world_native_set,
    world_typo_set,
    write_attacks,
)
from sae_vit.analysis.typo.defences import (
    TEMPLATE,
    Defence,
    HeadDefence,
    ProbeDefence,
    PromptDefence,
    SaeDefence,
    TypoMetrics,
    best_setting,
    classify_image,
    embed_images,
    evaluate,
    folder_eval,
    input_side,
    predict,
    resize_warning,
    undefended,
)
from sae_vit.analysis.typo.files import (
    ASSET_FEATURES,
    ASSET_SAE,
    AssetConfig,
    asset_dir,
    default_pair,
    defence_from_files,
    features_path_for,
    load_features,
    resolve_features,
    sae_training_images,
    save_features,
)
from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE
from sae_vit.world import scenes as world

__all__ = [
    "ASSET_FEATURES", "ASSET_SAE", "FAMILIES", "HELD_OUT", "SAE_TRAINING_ATTACKS", "AssetConfig", "AttackConfig",
    "EvalConfig", "HeadDefence", "ModelBundle", "TypoMetrics", "input_side", "resize_warning",
    "test_recipes",
    "SaeDefence", "SaeVitError", "TypoReport", "asset_dir", "classify_image", "default_pair",
    "defence_from_files", "embed_images", "features_path_for", "folder_eval", "load_features", "load_model",
    "open_image", "pseudo_word", "rank_text_features", "render_attack", "resolve_features", "run_world_eval",
    "sae_training_images", "save_features", "to_rgb", "world_native_set", "write_attacks",
    "write_report_features",
]


@torch.no_grad()
def latent_means(backbone: Backbone, sae: SAE, images: Tensor, pool: str = "mean", batch_size: int = 256) -> Tensor:
    """Per-image pooled SAE latents [n, d_sae] at the SAE's hook (``mean`` or ``max`` over its tokens)."""
    out, c = [], sae.cfg
    for x in images.split(batch_size):
        f = sae.encode(backbone.capture(x.to(backbone.device), [c.layer], c.site, c.tokens)[c.layer].float())
        out.append((f.mean(1) if pool == "mean" else f.amax(1)).cpu())
    return torch.cat(out)


def rank_text_features(clean: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """Rank features by the standardised paired difference (mean of text − clean over the pooled std).

    ``clean`` and ``text`` are pooled latents [n, d_sae] of the same images; returns ``(indices, scores)``
    sorted by score, highest first (features that never fire score 0)."""
    diff = (text - clean).mean(0)
    pooled = ((clean.var(0) + text.var(0)) / 2).sqrt()
    score = torch.where(pooled > 0, diff / (pooled + 1e-6), torch.zeros_like(diff))
    order = score.argsort(descending=True)
    return order, score[order]


def discover_features(backbone: Backbone, sae: SAE, data: TypoSet, pool: str = "mean", max_features: int = 256) -> list[dict]:
    """Text features of ``sae`` on a discovery :class:`TypoSet`: ``[{"index", "score"}]``, best first."""
    order, scores = rank_text_features(latent_means(backbone, sae, data.clean, pool),
                                       latent_means(backbone, sae, data.attacked, pool))
    keep = scores > 0
    return [{"index": int(i), "score": round(float(s), 4)} for i, s in zip(order[keep][:max_features],
                                                                             scores[keep][:max_features], strict=True)]


@torch.no_grad()
def rank_heads(backbone: Backbone, data: TypoSet, class_emb: Tensor, max_images: int = 128) -> list[tuple[int, int, float]]:
    """Every attention head ranked by how much its ablation (at CLS) lowers the ASR on ``data``:
    ``[(layer, head, asr_drop)]``, largest drop first."""
    imgs, written = data.attacked[:max_images], data.written[:max_images]

    def asr(defence: Defence = Defence()) -> float:
        return float((predict(backbone, imgs, class_emb, defence).argmax(-1) == written).float().mean())

    base = asr()
    out = [(layer, h, base - asr(HeadDefence([(layer, h)])))
           for layer in range(backbone.n_layers) for h in range(backbone.model.blocks[layer].attn.num_heads)]
    return sorted(out, key=lambda t: -t[2])


@torch.no_grad()
def fit_probe(backbone: Backbone, data: TypoSet, layer: int, tokens: str = "all", steps: int = 200) -> ProbeDefence:
    """A logistic-regression probe (text present or not) on token-mean residuals at ``layer``; its unit
    weight vector becomes the direction a :class:`ProbeDefence` removes."""
    def resid(images: Tensor) -> Tensor:  # [n, T, d] at ``layer``, 256 images at a time
        return torch.cat([backbone.capture(images[i : i + 256].to(backbone.device), [layer], "resid_post", tokens)[layer]
                          .float().cpu() for i in range(0, len(images), 256)])

    clean = resid(data.clean)
    xc, xa = clean.mean(1), resid(data.attacked).mean(1)
    x = torch.cat([xc, xa])
    y = torch.cat([torch.zeros(len(xc)), torch.ones(len(xa))])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    minimize([w, b], lambda: F.binary_cross_entropy_with_logits(z @ w + b, y) + 1e-3 * w.square().sum(), steps)
    direction = F.normalize((w.detach() / sd), dim=0)  # back to the residual's own coordinates
    # the clean mean of the projection, over every token (the edit acts per token)
    return ProbeDefence(layer, direction, float((clean @ direction).mean()), tokens)


def tune_baselines(bundle: ModelBundle, disc: TypoSet, val: TypoSet, class_emb: Tensor, classes: Sequence[str],
                   layer: int, tokens: str, base: TypoMetrics, head_counts: Sequence[int],
                   prompt_strengths: Sequence[float], max_clean_drop: float) -> dict[str, Defence]:
    """Each baseline fitted on ``disc``, its setting chosen on ``val`` by :func:`best_setting` against ``base``
    (no defence on ``val``): the highest reading-specific gain among the settings that keep clean accuracy."""
    bb = bundle.backbone
    plain = undefended(bb, val)

    def choose(candidates: Sequence[Defence]) -> Defence:
        metrics = [evaluate(bb, val, class_emb, d, base=base, plain=plain) for d in candidates]
        return candidates[best_setting(metrics, base.clean, max_clean_drop)]

    heads = rank_heads(bb, disc, class_emb)
    word_emb = bundle.head.embed(list(classes), ("the word {}.",))
    bare = bundle.head.embed(list(classes), ("{}",))
    return {
        "heads": choose([HeadDefence([(h[0], h[1]) for h in heads[:k]]) for k in head_counts]),
        "prompt (class)": choose([Defence()] + [PromptDefence("class", s, word_emb) for s in prompt_strengths]),
        "prompt (oracle word)": choose([Defence()] + [PromptDefence("oracle", s, bare) for s in prompt_strengths]),
        "probe": fit_probe(bb, disc, layer, tokens),
    }


#: Discovery settings of the shipped feature set: smaller words in the upper part, black and white only.
DISCOVERY_ATTACK = FAMILIES["discovery"]
#: A different recipe for the generalisation check: larger words in yellow and black, across the middle (inside
#: what the typo SAE trained on).
SHIFTED_ATTACK = FAMILIES["shifted"]
#: The held-out family: chromatic fill and stroke, a thicker stroke, the bottom third (never seen by the typo SAE,
#: discovery or selection).
HELD_OUT_ATTACK = FAMILIES[HELD_OUT]


@dataclass(frozen=True)
class EvalConfig:
    """The world protocol: splits, sizes, attack recipes and the selection grid."""

    n_discovery: int = 512
    """Images of the world's ``train`` split used to discover features, heads and the probe."""
    n_val: int = 600
    """Images of the ``val`` split used to choose layer, N and each baseline's setting (enough to resolve the
    2-point clean-accuracy limit: 300 were not)."""
    n_test: int = 600
    """Images of the ``test`` split on which numbers are reported."""
    discovery_attack: AttackConfig = DISCOVERY_ATTACK
    """Recipe for discovery, validation and the in-distribution test."""
    shifted_attack: AttackConfig = SHIFTED_ATTACK
    """A different size, colour and position, inside what the typo SAE trained on: a generalisation test."""
    held_out_attack: AttackConfig = HELD_OUT_ATTACK
    """The held-out family (bottom third, thick stroke): never in the typo SAE's training, discovery or selection."""
    held_out_colours_attack: AttackConfig = FAMILIES["held-out colours"]
    """The held-out family's placement with fill colours no typo SAE training image has (red, green, blue, purple)."""
    ns: tuple[int, ...] = (0, 2, 4, 8, 16, 32, 64)
    """Numbers of suppressed features tried on the validation split."""
    head_counts: tuple[int, ...] = (0, 1, 2, 4, 8)
    """Numbers of ablated heads tried (the baseline)."""
    prompt_strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """Prompt-side strengths tried."""
    max_clean_drop: float = 0.02
    """A setting is eligible only if its validation clean accuracy drops at most this much; among the eligible,
    the highest validation reading-specific gain wins (:func:`~.defences.best_setting`)."""
    pool: str = "mean"
    """How latents are pooled over tokens for discovery: ``mean`` or ``max``."""
    seed: int = 0
    """World seed (scenes and attack draws)."""
    baselines: bool = True
    """Also run the head-ablation, prompt and probe baselines."""
    test_sets: tuple[str, ...] = ("discovery", "shifted", "held-out", "held-out colours", "world")
    """Which test sets to report: our recipe as in discovery, the shifted recipe, the two held-out families, the
    world's own renderer."""


@dataclass
class TypoReport:
    """What :func:`run_world_eval` returns."""

    sweep: list[dict]
    """Validation rows: one per (layer, N) with clean / attacked / control accuracy, ASR and the gains."""
    layer: int
    """Chosen layer."""
    n: int
    """Chosen number of suppressed features."""
    sae_path: str
    features: list[dict]
    """Ranked text features of the chosen SAE (index, score), best first."""
    results: dict[str, dict[str, TypoMetrics]]
    """Test set name -> defence name -> metrics (gains against ``none`` on the same set)."""
    settings: dict[str, str]
    """Defence name -> what was chosen for it."""
    model: str = ""


def test_recipes(cfg: EvalConfig) -> dict[str, tuple[str, AttackConfig | None, int]]:
    """Test set key -> (name in the report, attack recipe or None for the world's own renderer, seed)."""
    return {"discovery": ("test (discovery recipe)", cfg.discovery_attack, cfg.seed),
            "shifted": ("test (shifted recipe)", cfg.shifted_attack, cfg.seed + 1),
            "held-out": ("test (held-out family)", cfg.held_out_attack, cfg.seed + 2),
            "held-out colours": ("test (held-out colours)", cfg.held_out_colours_attack, cfg.seed + 3),
            "world": ("test (world typographic)", None, cfg.seed)}


def run_world_eval(bundle: ModelBundle, saes: Sequence[tuple[str | os.PathLike, SAE]], cfg: EvalConfig = EvalConfig(),
                   progress: Callable[[str], None] | None = None) -> TypoReport:
    """Discover text features of each SAE on the world's train split, choose the layer and N on val by
    reading-specific gain, and report every defence on the test sets of ``cfg.test_sets`` (each with clean and
    control twins; gains against no defence on the same images)."""
    say = progress or (lambda _msg: None)
    if not saes:
        raise SaeVitError("No SAE to evaluate; pass --sae with at least one checkpoint.")
    bb = bundle.backbone
    classes = list(world.SHAPES)
    class_emb = class_embeddings(bundle.head, classes, (TEMPLATE,))
    recipes = test_recipes(cfg)
    unknown = [t for t in cfg.test_sets if t not in recipes]
    if unknown:
        raise SaeVitError(f"Unknown test set {unknown[0]!r}; use some of: {', '.join(recipes)}.")
    say(f"rendering discovery ({cfg.n_discovery}), validation ({cfg.n_val}) and test ({cfg.n_test}) images")
    disc = world_typo_set(bb, "train", cfg.n_discovery, cfg.discovery_attack, cfg.seed)
    val = world_typo_set(bb, "val", cfg.n_val, cfg.discovery_attack, cfg.seed)
    tests = {name: world_native_set(bb, "test", cfg.n_test, seed) if attack is None
             else world_typo_set(bb, "test", cfg.n_test, attack, seed)
             for name, attack, seed in (recipes[t] for t in cfg.test_sets)}
    base_val = evaluate(bb, val, class_emb)
    base_val = base_val.against(base_val)  # gains of no defence: 0
    sweep, best = [], None
    for path, sae in saes:
        check_sae_matches(sae, bb, path)
        say(f"discovering text features of layer {sae.cfg.layer} ({path})")
        ranked = discover_features(bb, sae, disc, cfg.pool, max_features=max(cfg.ns))
        n, rows = select_n(bb, sae, [f["index"] for f in ranked], val, class_emb, cfg.ns, base_val,
                           cfg.max_clean_drop)
        sweep.extend(rows)
        m = next(r for r in rows if r["n"] == n)
        if best is None or (m["reading_gain"], -n) > (best[0], -best[1]):
            best = (m["reading_gain"], n, path, sae, ranked)
    _, best_n, best_path, best_sae, features = best
    defences: dict[str, Defence] = {"none": Defence(),
                                    "sae": SaeDefence(best_sae, [f["index"] for f in features[:best_n]])}
    if cfg.baselines:
        say("baselines: ranking attention heads, fitting the probe, tuning the prompt defences")
        defences.update(tune_baselines(bundle, disc, val, class_emb, classes, best_sae.cfg.layer, best_sae.cfg.tokens,
                                       base_val, cfg.head_counts, cfg.prompt_strengths, cfg.max_clean_drop))
    results = {}
    for name, data in tests.items():
        say(f"evaluating on {name}")
        plain = undefended(bb, data)
        base = evaluate(bb, data, class_emb, plain=plain)
        results[name] = {d: evaluate(bb, data, class_emb, defence, base=base, plain=plain)
                         for d, defence in defences.items()}
    return TypoReport(sweep, best_sae.cfg.layer, best_n, str(best_path), features, results,
                      {d: defence.describe() for d, defence in defences.items()}, bundle.description)


def select_n(backbone: Backbone, sae: SAE, ranked: Sequence[int], val: TypoSet, class_emb: Tensor,
             ns: Sequence[int], base: TypoMetrics, max_clean_drop: float = 0.02) -> tuple[int, list[dict]]:
    """``(n, rows)``: the number of suppressed features chosen on ``val`` by :func:`best_setting` (highest
    reading-specific gain that keeps clean accuracy) against ``base`` (no defence, with its gains: 0), and one
    row per N tried."""
    tried = [n for n in ns if n <= len(ranked)]
    metrics = [evaluate(backbone, val, class_emb, SaeDefence(sae, ranked[:n]), base=base) if n else base
               for n in tried]
    rows = [{"layer": sae.cfg.layer, "n": n, **m.as_dict()} for n, m in zip(tried, metrics, strict=True)]
    return tried[best_setting(metrics, base.clean, max_clean_drop)], rows


def write_report_features(report: TypoReport, sae: SAE, out: str | os.PathLike | None, cfg: EvalConfig,
                          overwrite: bool = False) -> Path:
    """Save the chosen SAE's feature set (default: ``<sae>.typo.json`` beside it)."""
    path = Path(out) if out is not None else features_path_for(report.sae_path)
    discovery = {"source": "world:shapes", "split": "train", "n_images": cfg.n_discovery, "seed": cfg.seed,
                 "attack": asdict(cfg.discovery_attack), "pool": cfg.pool, "score": "standardised paired difference",
                 "template": TEMPLATE}
    selection = {"split": "val", "n_images": cfg.n_val, "ns": list(cfg.ns), "max_clean_drop": cfg.max_clean_drop,
                 "rule": "highest reading-specific gain (attack gain - control gain) among the settings whose "
                         "clean accuracy drops at most max_clean_drop; ties to the smaller N",
                 "held_out_family": asdict(cfg.held_out_attack), "sweep": report.sweep}
    return save_features(path, report.sae_path, sae, report.features, report.n, discovery, selection, overwrite)
