"""Steer-score's null edits, the steerability rule, token-norm strengths, the per-attribute vocabulary and the
steer–detect agreement with its permutation test."""

import json

import pytest
import torch

from sae_vit.analysis.steer import (
    SteerConfig,
    build_context,
    decision_strength,
    detected_concepts,
    permutation_test,
    sae_family,
    score_nulls,
    steer_score,
    steerable_mask,
    world_attributes,
    world_labels,
)
from tests.test_steer import _setup

KINDS = {"feature", "neuron", "random", "null_noise", "null_erase", "null_erase_full"}


def _report(backbone, **cfg):
    sae, images, text = _setup(backbone)
    words = [f"w{i}" for i in range(7)]
    config = SteerConfig(alphas=(0, 5, 40), threshold=0.01, temperature=30.0, curve_top=2, null_seeds=3,
                         permutations=500, **cfg)
    return steer_score(sae, backbone, images, words, text, config, max_features=10, random_control=6,
                       attributes=["a", "a", "a", "b", "b", "c", "c"]), sae


def test_nulls_are_scored_and_reported_everywhere(tiny_backbone):
    report, _ = _report(tiny_backbone)
    units, s = report.units, report.summary
    assert set(units.kind) == KINDS
    assert (units.kind == "null_noise").sum() == 3  # one row per seed
    nulls = units[units.kind.str.startswith("null")]
    assert nulls["S"].notna().all() and nulls["S_alpha_40"].notna().all()  # the nulls' curve over the sweep
    for kind in ("null_noise", "null_erase", "null_erase_full"):
        assert set(s["nulls"][kind]) == {"S", "steerable"}
    assert s["nulls"]["bar"] == max(s["nulls"]["null_noise"]["S"], s["nulls"]["null_erase"]["S"])
    assert len(s["nulls"]["curve"]["token_norms"]) == len(s["nulls"]["curve"]["null_erase"])
    assert "S(s*) > threshold" in s["rule"]
    json.dumps(s, allow_nan=False)  # strict JSON (steer-score --json prints it)


def test_token_norm_columns(tiny_backbone):
    report, _ = _report(tiny_backbone, decide_at=0.25)
    units, s = report.units, report.summary
    scored = units[~units.kind.str.startswith("null")]
    assert {"alpha", "s", "s_token_norms"} <= set(units.columns)
    assert scored["s_token_norms"].round(6).eq(0.25).all()
    for kind, k in s["kinds"].items():
        assert k["s"] == pytest.approx(0.25 * s["token_norm"][kind])
        assert s["strengths_token_norms"][kind][-1] == pytest.approx(s["strengths"][kind][-1] / s["token_norm"][kind])
    assert s["decision"]["token_norms"] == pytest.approx(0.25)


def test_paper_decision_is_the_largest_alpha(tiny_backbone):
    sae, images, text = _setup(tiny_backbone)
    ctx = build_context(tiny_backbone, 3, "resid_post", images, text, "all", 30.0)
    fam, _ = sae_family(sae, ctx)
    d = decision_strength(SteerConfig(alphas=(-20, 150), decide_at=None), tiny_backbone, fam)
    assert d["alpha"] == 150 and d["token_norms"] == pytest.approx(d["s"] / fam.unit_norm)


def test_a_unit_below_a_null_is_not_steerable(tiny_backbone):
    S = torch.tensor([0.05, 0.3, 0.6, 0.9])
    assert steerable_mask(S, threshold=0.1, bar=0.5).tolist() == [False, False, True, True]
    assert steerable_mask(S, threshold=0.1, bar=0.0).tolist() == [False, True, True, True]
    # on a real report: the rule is what the table says, and it is stricter than the threshold alone
    report, _ = _report(tiny_backbone, decide_at=2.0)
    u, bar = report.units, report.summary["nulls"]["bar"]
    scored = u[~u.kind.str.startswith("null")]
    assert (scored.steerable == ((scored.S > 0.01) & (scored.S > bar))).all()
    assert (scored.steerable <= scored.steerable_threshold).all()
    nulls = u[u.kind.str.startswith("null")]
    assert (nulls.steerable == (nulls.S > 0.01)).all()  # a null is judged by the threshold alone


def test_null_edits_are_norm_matched(tiny_backbone):
    """At a strength below every token's distance to the mean, the partial erase is as strong a push as the noise:
    S of both grows from 0 with the strength, and the full erase does not depend on it."""
    _, images, text = _setup(tiny_backbone)
    ctx = build_context(tiny_backbone, 3, "resid_post", images, text, "all", 30.0)
    small = score_nulls(ctx, [1e-4, 0.5, 1.0], n_seeds=2, seed=0)
    assert small.noise_S.shape == (2, 3) and small.erase_S.shape == (3,)
    assert small.noise_S[:, 0].max() < 1e-5 and small.erase_S[0] < 1e-5  # a tiny push changes ~nothing
    again = score_nulls(ctx, [1.0], n_seeds=2, seed=0)
    assert again.full_S == pytest.approx(small.full_S)
    torch.testing.assert_close(again.noise_S[:, 0], small.noise_S[:, 2])  # seeded


def test_per_attribute_softmax_sums_to_one_within_each_attribute(tiny_backbone):
    _, images, text = _setup(tiny_backbone)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    ctx = build_context(tiny_backbone, 3, "resid_post", images, text, "all", 30.0, groups)
    for g in range(3):
        torch.testing.assert_close(ctx.p0[:, groups == g].sum(-1), torch.ones(len(images)))
    flat = build_context(tiny_backbone, 3, "resid_post", images, text, "all", 30.0)
    torch.testing.assert_close(flat.p0.sum(-1), torch.ones(len(images)))


def test_world_attributes_and_labels():
    from sae_vit.analysis.common import default_vocabulary

    class Toy:
        name = "toy"

    words = default_vocabulary(Toy())
    attrs = world_attributes(words)
    assert set(attrs) == {"object", "colour", "background", "size"}
    assert attrs[words.index("red")] == "colour" and attrs[words.index("water")] == "background"
    assert world_attributes(["dog", "red"]) is None  # not all world concepts: flat
    labels = world_labels(words, None, 12, seed=1)
    assert labels.shape == (12, len(words))
    assert (labels.sum(1) == 4).all()  # shape, colour, background, size


def test_detection_and_permutation_test():
    labels = torch.zeros(40, 3)
    labels[:10, 2] = 1  # images 0-9 show concept 2
    labels[10:, 0] = 1
    acts = torch.stack([torch.linspace(1, 0, 40), torch.zeros(40), torch.linspace(0, 1, 40)])
    assert detected_concepts(acts, labels, top=8).tolist() == [2, -1, 0]  # constant activation: no detection
    rare = torch.zeros(1, 40)
    rare[0, [30, 35]] = 1.0  # fires on two images only; zero-activation ties must not fill its top images
    labels[[30, 35], 1] = 1
    assert detected_concepts(rare, labels, top=8).tolist() == [1]
    yes, no = torch.ones(30, dtype=torch.bool), torch.zeros(30, dtype=torch.bool)
    far = permutation_test(yes, no, n_perm=2000, seed=0)
    assert far["difference"] == 1.0 and far["p"] < 0.01
    assert permutation_test(yes, yes, n_perm=200, seed=0)["p"] == 1.0
    assert permutation_test(yes, no[:0], n_perm=10)["p"] is None


def test_agreement_reported_per_family_with_its_test(tiny_backbone):
    report, _ = _report(tiny_backbone)
    s = report.summary
    for kind in ("feature", "neuron", "random"):
        k = s["kinds"][kind]
        assert {"agreement", "chance", "chance_uniform", "n", "no_detection"} <= set(k)
    test = s["agreement_tests"]["feature_vs_random"]
    assert test["n_perm"] == 500 and 0 < test["p"] <= 1
    scored = report.units[~report.units.kind.str.startswith("null")]
    assert {"detected", "agree", "target_attribute"} <= set(scored.columns)
    assert set(scored.target_attribute) <= {"a", "b", "c"}


def test_live_only_sampling(tiny_backbone):
    report, sae = _report(tiny_backbone)
    feats = report.units[report.units.kind == "feature"]
    assert (feats.density > 0).all()
    assert report.summary["kinds"]["feature"]["live_on_probe"] >= len(feats)


def test_bad_decide_at_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from sae_vit.cli import app

    r = CliRunner().invoke(app, ["steer-score", "--decide-at", "strong", "--sae", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--decide-at" in r.output and "Traceback" not in r.output


def test_mlp_neurons_share_the_probe_passes_and_labels_are_named(tiny_backbone):
    """The MLP-neuron family steers at the MLP's hidden units from the same probe context; without world labels the
    agreement is against the zero-shot top concept, and the summary says so."""
    sae, images, text = _setup(tiny_backbone)
    config = SteerConfig(alphas=(0, 5, 40), threshold=0.01, temperature=30.0, curve_top=2, null_seeds=2,
                         permutations=100)
    report = steer_score(sae, tiny_backbone, images, [f"w{i}" for i in range(7)], text, config, max_features=4,
                         mlp_neurons=True)
    mlp = report.units[report.units.kind == "mlp_neuron"]
    assert len(mlp) == tiny_backbone.model.blocks[0].mlp.fc1.out_features and mlp["S"].notna().all()
    assert report.summary["agreement_labels"] == "zero-shot top concept"
