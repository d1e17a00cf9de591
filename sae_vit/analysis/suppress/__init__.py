"""Targeted suppression: remove a spurious attribute from CLIP's vision tower by zeroing SAE features.

The procedure (docs/suppress.md, ../PAPER.md §3): rank features on train (:mod:`.ranking`), choose the layer
and N on val and evaluate on test (:mod:`.run`), over the datasets of :mod:`.data`, the forward-pass variants
of :mod:`.conditions` and the probes of :mod:`.probes`; :mod:`.report` writes the results and :mod:`.command`
is ``saevit suppress``.

Suppression zeroes the chosen latents at every token the SAE reads, through :func:`~sae_vit.core.backbone.splice`
and :func:`sae_vit.core.edits.zero` (so the SAE's reconstruction error is kept). Baselines: no intervention;
N random live features; projecting out the spurious direction of a (group-balanced) linear probe on the
activations at the SAE's hook.
"""

from sae_vit.analysis.probes import LinearProbe, fit_logistic
from sae_vit.analysis.suppress.command import suppress
from sae_vit.analysis.suppress.conditions import Condition, group_metrics, run_conditions
from sae_vit.analysis.suppress.data import ImageBatches, TaskData, read_task
from sae_vit.analysis.suppress.ranking import LayerStats, auroc, mean_diff_scores
from sae_vit.analysis.suppress.report import SuppressResult
from sae_vit.analysis.suppress.run import SuppressConfig, run_suppress

__all__ = ["Condition", "ImageBatches", "LayerStats", "LinearProbe", "SuppressConfig", "SuppressResult", "TaskData",
           "auroc", "fit_logistic", "group_metrics", "mean_diff_scores", "read_task", "run_conditions", "run_suppress",
           "suppress"]
