"""The sparsity table's reliability flag and the density verdict's bootstrap rule (issue 16, item 4)."""

from __future__ import annotations

import numpy as np

from sae_vit.analysis.sparsity import DENSITY_MARGIN, MIN_EVAL_TOKENS, density_contrast, min_eval_tokens


def test_min_eval_tokens_is_where_a_rare_latent_is_seen():
    n = min_eval_tokens(rate=0.01, miss=0.02)
    assert (1 - 0.01) ** n <= 0.02 < (1 - 0.01) ** (n - 1)
    assert MIN_EVAL_TOKENS == min_eval_tokens()
    assert min_eval_tokens(rate=0.1) < n  # commoner latents need fewer tokens


def test_density_contrast_needs_the_whole_interval_above_the_margin():
    rng = np.random.default_rng(0)
    sparse = rng.poisson(60, 400)
    clear = density_contrast(rng.poisson(80, 6000), sparse)  # 1.33x on many tokens
    assert clear["holds"] and clear["lo"] > DENSITY_MARGIN and clear["lo"] <= clear["ratio"] <= clear["hi"]
    small = density_contrast(rng.poisson(62, 6000), sparse)  # 1.03x: inside the margin
    assert not small["holds"] and small["ratio"] > 1
    noisy = density_contrast(rng.poisson(70, 5), rng.poisson(60, 5))  # ~1.17x on 5 tokens each: too wide
    assert noisy["hi"] - noisy["lo"] > clear["hi"] - clear["lo"]
    assert {"ratio", "lo", "hi", "holds", "margin", "n_dense", "n_sparse", "n_boot"} <= set(clear)
