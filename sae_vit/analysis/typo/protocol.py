"""The world protocol: on the synthetic world, discovery = ``train``, selection of layer and N = ``val``, reported
numbers = ``test``; nothing chosen ever sees the test split."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import Tensor

from sae_vit.analysis.common import ModelBundle, check_sae_matches, class_embeddings
from sae_vit.analysis.typo.attacks import DISCOVERY_ATTACK, SHIFTED_ATTACK, AttackConfig
from sae_vit.analysis.typo.baselines import tune_baselines
from sae_vit.analysis.typo.defences import Defence, SaeDefence
from sae_vit.analysis.typo.evaluation import TEMPLATE, TypoMetrics, better, evaluate
from sae_vit.analysis.typo.features import discover_features
from sae_vit.analysis.typo.files import features_path_for, save_features
from sae_vit.analysis.typo.sets import TypoSet, world_native_set, world_typo_set
from sae_vit.core.backbone import Backbone
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE
from sae_vit.world import scenes as world


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
    """A different size, colour and position: the generalisation test."""
    ns: tuple[int, ...] = (0, 2, 4, 8, 16, 32, 64)
    """Numbers of suppressed features tried on the validation split."""
    head_counts: tuple[int, ...] = (0, 1, 2, 4, 8)
    """Numbers of ablated heads tried (the baseline)."""
    prompt_strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """Prompt-side strengths tried."""
    max_clean_drop: float = 0.02
    """A setting is eligible only if its validation clean accuracy drops at most this much."""
    pool: str = "mean"
    """How latents are pooled over tokens for discovery: ``mean`` or ``max``."""
    seed: int = 0
    """World seed (scenes and attack draws)."""
    baselines: bool = True
    """Also run the head-ablation, prompt and probe baselines."""
    test_sets: tuple[str, ...] = ("discovery", "shifted", "world")
    """Which test sets to report: our recipe as in discovery, the shifted recipe, the world's own renderer."""


@dataclass
class TypoReport:
    """What :func:`run_world_eval` returns."""

    sweep: list[dict]
    """Validation rows: one per (layer, N) with clean / attacked / control accuracy and ASR."""
    layer: int
    """Chosen layer."""
    n: int
    """Chosen number of suppressed features."""
    sae_path: str
    features: list[dict]
    """Ranked text features of the chosen SAE (index, score), best first."""
    results: dict[str, dict[str, TypoMetrics]]
    """Test set name -> defence name -> metrics."""
    settings: dict[str, str]
    """Defence name -> what was chosen for it."""
    model: str = ""


def run_world_eval(bundle: ModelBundle, saes: Sequence[tuple[str | os.PathLike, SAE]], cfg: EvalConfig = EvalConfig(),
                   progress: Callable[[str], None] | None = None) -> TypoReport:
    """Discover text features of each SAE on the world's train split, choose the layer and N on val, and report
    every defence on three test sets: the discovery recipe, the shifted recipe and the world's own typographic
    split (each with clean and control twins)."""
    say = progress or (lambda _msg: None)
    if not saes:
        raise SaeVitError("No SAE to evaluate; pass --sae with at least one checkpoint.")
    bb = bundle.backbone
    classes = list(world.SHAPES)
    class_emb = class_embeddings(bundle.head, classes, (TEMPLATE,))
    say(f"rendering discovery ({cfg.n_discovery}), validation ({cfg.n_val}) and test ({cfg.n_test}) images")
    disc = world_typo_set(bb, "train", cfg.n_discovery, cfg.discovery_attack, cfg.seed)
    val = world_typo_set(bb, "val", cfg.n_val, cfg.discovery_attack, cfg.seed)
    makers = {
        "discovery": ("test (discovery recipe)", lambda: world_typo_set(bb, "test", cfg.n_test, cfg.discovery_attack,
                                                                        cfg.seed)),
        "shifted": ("test (shifted recipe)", lambda: world_typo_set(bb, "test", cfg.n_test, cfg.shifted_attack,
                                                                    cfg.seed + 1)),
        "world": ("test (world typographic)", lambda: world_native_set(bb, "test", cfg.n_test, cfg.seed)),
    }
    unknown = [t for t in cfg.test_sets if t not in makers]
    if unknown:
        raise SaeVitError(f"Unknown test set {unknown[0]!r}; use some of: {', '.join(makers)}.")
    tests = {makers[t][0]: makers[t][1]() for t in cfg.test_sets}
    base_val = evaluate(bb, val, class_emb, control=False)
    sweep, best = [], None
    ranked_by_sae = {}
    for path, sae in saes:
        check_sae_matches(sae, bb, path)
        say(f"discovering text features of layer {sae.cfg.layer} ({path})")
        ranked = discover_features(bb, sae, disc, cfg.pool, max_features=max(cfg.ns))
        ranked_by_sae[str(path)] = ranked
        n, rows = select_n(bb, sae, [f["index"] for f in ranked], val, class_emb, cfg.ns, cfg.max_clean_drop)
        sweep.extend(rows)
        m = next(r for r in rows if r["n"] == n)
        if best is None or (m["attacked"], -n) > (best[0]["attacked"], -best[2]):
            best = (m, (path, sae), n)
    _, (best_path, best_sae), best_n = best
    features = ranked_by_sae[str(best_path)]
    defences: dict[str, Defence] = {"none": Defence(),
                                    "sae": SaeDefence(best_sae, [f["index"] for f in features[:best_n]])}
    if cfg.baselines:
        say("baselines: ranking attention heads, fitting the probe, tuning the prompt defences")
        defences.update(tune_baselines(bundle, disc, val, class_emb, classes, best_sae.cfg.layer, best_sae.cfg.tokens,
                                       base_val.clean, cfg.head_counts, cfg.prompt_strengths, cfg.max_clean_drop))
    results = {}
    for name, data in tests.items():
        say(f"evaluating on {name}")
        results[name] = {d: evaluate(bb, data, class_emb, defence) for d, defence in defences.items()}
    return TypoReport(sweep, best_sae.cfg.layer, best_n, str(best_path), features, results,
                      {d: defence.describe() for d, defence in defences.items()}, bundle.description)


def select_n(backbone: Backbone, sae: SAE, ranked: Sequence[int], val: TypoSet, class_emb: Tensor,
             ns: Sequence[int], max_clean_drop: float = 0.02) -> tuple[int, list[dict]]:
    """The number of suppressed features with the best attacked accuracy on ``val`` whose clean accuracy drops
    at most ``max_clean_drop``; returns ``(n, rows)`` with every tried N."""
    base = evaluate(backbone, val, class_emb, control=False)
    rows, best, best_n = [], None, 0
    for n in ns:
        if n > len(ranked):
            continue
        m = base if n == 0 else evaluate(backbone, val, class_emb, SaeDefence(sae, ranked[:n]), control=False)
        rows.append({"layer": sae.cfg.layer, "n": n, **m.as_dict()})
        if better(m, best, base.clean, max_clean_drop):
            best, best_n = m, n
    return best_n, rows


def write_report_features(report: TypoReport, sae: SAE, out: str | os.PathLike | None, cfg: EvalConfig,
                          overwrite: bool = False) -> Path:
    """Save the chosen SAE's feature set (default: ``<sae>.typo.json`` beside it)."""
    path = Path(out) if out is not None else features_path_for(report.sae_path)
    discovery = {"source": "world:shapes", "split": "train", "n_images": cfg.n_discovery, "seed": cfg.seed,
                 "attack": asdict(cfg.discovery_attack), "pool": cfg.pool, "score": "standardised paired difference",
                 "template": TEMPLATE}
    selection = {"split": "val", "n_images": cfg.n_val, "ns": list(cfg.ns), "max_clean_drop": cfg.max_clean_drop,
                 "sweep": report.sweep}
    return save_features(path, report.sae_path, sae, report.features, report.n, discovery, selection, overwrite)
