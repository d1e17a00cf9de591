"""Steerability: how precisely pushing one SAE feature (or one neuron) moves CLIP's output toward a concept,
read against pushes that carry no concept.

The authors' procedure (docs/steer.md, ../PAPER.md §2): at the SAE's hook, clamp feature i to a strength s at
every selected token, keeping the SAE's error term (x' = x + (s − f_i) · d_i, d_i the decoder row, scaled back
by the token's normalisation); run the rest of the model; p = softmax(T · ê · Vᵀ) over a vocabulary of concept
words; Δp = mean over probe images of p_steered − p_unsteered; S = Σ_v Δp_v². On top of the paper's S > 0.10,
a unit must beat the null edits (:mod:`.nulls`) at the decision strength, given in mean hooked-token norms; and
the concept it steers to is compared with the concept its top images show (:mod:`.agreement`).

Modules: :mod:`.context` (options, the shared probe pass, the batched steered pass, the unit families and their
strengths), :mod:`.nulls`, :mod:`.agreement`, :mod:`.score` (one SAE) and :mod:`.run` (``steer-score``).

Speed: activations below the hook are computed once; each steered pass runs only the blocks after it, and
many (unit, strength, image) triples share one batched forward pass.
"""

from sae_vit.analysis.steer.agreement import detected_concepts, family_agreement, permutation_test
from sae_vit.analysis.steer.context import (
    DECIDE_AT,
    REFERENCE_NORM,
    SteerConfig,
    SteerContext,
    UnitFamily,
    build_context,
    decision_strength,
    naive_steer,
    neuron_family,
    random_family,
    sae_family,
    steer_batched,
    steerability,
    strengths_for,
)
from sae_vit.analysis.steer.nulls import NULL_KINDS, NullScores, null_bar, score_nulls, steerable_mask
from sae_vit.analysis.steer.run import score_saes, world_attributes, world_labels
from sae_vit.analysis.steer.score import (
    RULE,
    SteerReport,
    UnitScores,
    plot_curves,
    results_stem,
    score_family,
    steer_score,
)

__all__ = [
    "DECIDE_AT", "NULL_KINDS", "REFERENCE_NORM", "RULE", "NullScores", "SteerConfig", "SteerContext", "SteerReport",
    "UnitFamily", "UnitScores", "build_context", "decision_strength", "detected_concepts", "family_agreement",
    "naive_steer", "neuron_family", "null_bar", "permutation_test", "plot_curves", "random_family", "results_stem",
    "sae_family", "score_family", "score_nulls", "score_saes", "steer_batched", "steer_score", "steerability", "steerable_mask",
    "strengths_for", "world_attributes", "world_labels",
]
