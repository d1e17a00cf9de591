"""Each sparse kernel against the plain dense computation it replaces, on hypothesis-drawn inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_vit.core import kernels

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def problems(draw, max_n=40, max_d=24, max_m=96):
    """(x [n, d], W_enc [d, m], b_enc [m], b_dec [d], W_dec [m, d], k), seeded random values."""
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    m = draw(st.integers(2, max_m))
    k = draw(st.integers(1, m))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    x = torch.randn(n, d, generator=g) * scale
    return (x, torch.randn(d, m, generator=g), torch.randn(m, generator=g), torch.randn(d, generator=g),
            torch.randn(m, d, generator=g), k)


def _assert_fast_matches_dense(run) -> None:
    """``run(fast)`` -> (loss, grads of W_enc, b_enc, b_dec, W_dec[, x]): the fast kernels against the dense reference,
    each gradient compared relative to the reference's largest entry."""
    loss_fast, grads_fast = run(True)
    loss_ref, grads_ref = run(False)
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-4, atol=1e-3)
    for name, a, b in zip(["W_enc", "b_enc", "b_dec", "W_dec", "x"], grads_fast, grads_ref, strict=False):
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-4, atol=1e-4, msg=name)


@given(st.integers(1, 64), st.integers(1, 8), st.sampled_from([4, 16]), st.integers(1, 256), st.booleans(),
       st.integers(0, 2**31 - 1))
@SETTINGS
def test_grouped_topk_equals_torch_topk(n, groups_per_k, group, k, ties, seed):
    m = group * 2 * k * groups_per_k  # large enough that the grouped path (not the fallback) runs
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(n, m, generator=g)
    if ties:  # few distinct values: ties everywhere, including at the k-th value
        pre = pre.mul(2).round()
    vals, idx = kernels.topk(pre, k, group=group)
    ref_vals, _ = pre.topk(k, dim=-1)
    assert torch.equal(vals.sort(dim=-1, descending=True).values, ref_vals)
    assert torch.equal(pre.gather(1, idx), vals)
    assert all(len(set(row)) == k for row in idx.tolist())


def test_grouped_topk_falls_back_on_small_or_odd_widths():
    pre = torch.randn(5, 30)
    for k in (1, 7, 30):
        vals, idx = kernels.topk(pre, k)
        assert torch.equal(vals.sort(-1, descending=True).values, pre.topk(k, -1).values)


@given(problems())
@SETTINGS
def test_sparse_decode_and_sampled_dot_match_dense(problem):
    x, W_enc, b_enc, b_dec, W_dec, k = problem
    n, m = x.shape[0], W_dec.shape[0]
    idx = torch.rand(n, m).argsort(dim=1)[:, :k]
    vals = torch.randn(n, k)
    dense = torch.zeros(n, m).scatter_(1, idx, vals)
    torch.testing.assert_close(kernels.decode(idx, vals, W_dec), dense @ W_dec, rtol=1e-4, atol=1e-4)
    a = torch.randn(n, W_dec.shape[1])
    torch.testing.assert_close(kernels.sampled_dot(idx, a, W_dec), (a @ W_dec.T).gather(1, idx),
                               rtol=1e-4, atol=1e-4)
    bags = kernels.bags_by_latent(idx, m)
    torch.testing.assert_close(kernels.sum_by_latent(bags, vals, a), dense.T @ a, rtol=1e-4, atol=1e-4)


def dense_topk_sae(x, W_enc, b_enc, b_dec, W_dec, k):
    """The slow reference: dense encoder, TopK, ReLU, dense decoder."""
    pre = (x - b_dec) @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    return f @ W_dec + b_dec, f


@given(problems(), st.booleans())
@SETTINGS
def test_sparse_topk_gradients_match_dense_autograd(problem, x_grad):
    """Loss and every gradient (W_enc, b_enc, b_dec, W_dec, and x) of the sparse path equal the dense ones."""
    x, *weights, k = problem
    target = torch.randn_like(x)

    def run(fast):
        xs = x.clone().requires_grad_(x_grad)
        params = [w.clone().requires_grad_() for w in weights]
        W_enc, b_enc, b_dec, W_dec = params
        if fast:
            enc = kernels.topk_encode(xs, W_enc, b_enc, b_dec, k)
            x_hat = kernels.decode(enc.idx, enc.vals.relu(), W_dec, enc.bags) + b_dec
        else:
            x_hat, _ = dense_topk_sae(xs, W_enc, b_enc, b_dec, W_dec, k)
        loss = (x_hat - target).pow(2).sum()
        loss.backward()
        return loss, [p.grad for p in params] + ([xs.grad] if x_grad else [])

    # Ties in the pre-activations could select different (equal-valued) latents; random floats have none.
    _assert_fast_matches_dense(run)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encoder_pre_in_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    x, W, b, c = torch.randn(8, 16, generator=g), torch.randn(16, 64, generator=g), torch.randn(64, generator=g), \
        torch.randn(16, generator=g)
    pre = kernels.encoder_pre(x, kernels.encoder_rows(W, b), c, dtype)
    assert pre.dtype == dtype and not pre.requires_grad
    torch.testing.assert_close(pre.float(), (x - c) @ W + b, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                               atol=0.1 if dtype == torch.bfloat16 else 1e-5)


def test_workspace_reuses_its_buffer_and_changes_no_result():
    """The trainer's pre-activation buffer: the same storage step after step (a shorter batch gets a view of it,
    a longer one a new buffer), and the same selection and values as without it."""
    g = torch.Generator().manual_seed(0)
    W, b, c = torch.randn(16, 64, generator=g), torch.randn(64, generator=g), torch.randn(16, generator=g)
    enc = kernels.encoder_rows(W, b)
    ws = kernels.Workspace()
    ptrs = []
    for n in (8, 8, 5, 12):
        x = torch.randn(n, 16, generator=g)
        pre = kernels.encoder_pre(x, enc, c, workspace=ws)
        ptrs.append(pre.data_ptr())
        torch.testing.assert_close(pre, (x - c) @ W + b, rtol=1e-5, atol=1e-5)
        plain, reused = kernels.topk_encode_rows(x, enc, c, 4), kernels.topk_encode_rows(x, enc, c, 4, workspace=ws)
        assert torch.equal(plain.idx, reused.idx) and torch.equal(plain.vals, reused.vals)
    assert ptrs[0] == ptrs[1] == ptrs[2] != ptrs[3]


def test_workspace_shared_by_sizes_and_dtypes_holds_one_buffer_each():
    """Trainers of several SAEs share one workspace (train_many): one buffer per dtype, the largest asked for."""
    ws = kernels.Workspace()
    big = ws.get("pre", (8, 64), torch.float32, torch.device("cpu"))
    half = ws.get("pre", (8, 16), torch.bfloat16, torch.device("cpu"))
    small = ws.get("pre", (8, 32), torch.float32, torch.device("cpu"))
    assert small.data_ptr() == big.data_ptr() and half.dtype == torch.bfloat16
    assert ws.get("pre", (8, 16), torch.bfloat16, "cpu").data_ptr() == half.data_ptr()


@given(problems(), st.booleans(), st.integers(0, 2**31 - 1), st.integers(1, 8), st.sampled_from([0.0, 1.0]),
       st.sampled_from([-1.0, 0.0, 2.0]))
@SETTINGS
def test_dead_columns_ride_along_with_dense_gradients(problem, x_grad, seed, aux_k, ragged_density, shift):
    """``topk_encode(..., dead, aux_k)`` and ``decode_with_dead``: AuxK's selection among the dead latents (each
    token's top ``aux_k`` positive pre-activations, as a dense or a ragged code; a bias ``shift`` makes few, some
    or most positive) and its decode give the gradients of the dense computation, with ``b_dec`` held constant
    on the dead path."""
    x, *weights, k = problem
    m = weights[0].shape[1]
    g = torch.Generator().manual_seed(seed)
    dead = torch.randperm(m, generator=g)[: int(torch.randint(1, m + 1, (1,), generator=g))]
    weights[1] = weights[1].clone()
    weights[1][dead] += shift * weights[1].abs().max()
    target, target_dead = torch.randn_like(x), torch.randn_like(x)

    def run(fast):
        xs = x.clone().requires_grad_(x_grad)
        params = [w.clone().requires_grad_() for w in weights]
        W_enc, b_enc, b_dec, W_dec = params
        if fast:
            enc = kernels.topk_encode(xs, W_enc, b_enc, b_dec, k, dead=dead, aux_k=aux_k)
            x_hat, e_hat = kernels.decode_with_dead(enc.idx, enc.vals.relu(), W_dec, enc.bags, dead, enc.aux,
                                                    enc.aux.activate(enc.aux_pre))
            x_hat = x_hat + b_dec
        else:
            x_hat, _ = dense_topk_sae(xs, W_enc, b_enc, b_dec, W_dec, k)
            dead_pre = (xs - b_dec.detach()) @ W_enc[:, dead] + b_enc[dead]
            top, j = dead_pre.topk(min(aux_k, len(dead)), dim=-1)
            e_hat = torch.zeros_like(dead_pre).scatter(1, j, top.relu()) @ W_dec[dead]
        loss = (x_hat - target).pow(2).sum() + (e_hat - target_dead).pow(2).sum()
        loss.backward()
        return loss, [p.grad for p in params] + ([xs.grad] if x_grad else [])

    saved = kernels.RAGGED_DENSITY
    kernels.RAGGED_DENSITY = ragged_density
    try:
        _assert_fast_matches_dense(run)
    finally:
        kernels.RAGGED_DENSITY = saved


def test_aux_code_is_ragged_only_while_few_pairs_are_selected():
    pre = torch.full((8, 24), -1.0)
    pre[0, :3] = 1.0  # 3 of 192 positive
    few = kernels.aux_code(pre, 24)
    assert isinstance(few, kernels.RaggedCode) and few.pairs == 3
    assert few.crow.tolist() == [0, 3, 3, 3, 3, 3, 3, 3, 3] and few.latents.tolist() == [0, 1, 2]
    pre[:, :12] = 1.0  # half positive; the top 4 of each token's 12 positives are selected
    many = kernels.aux_code(pre, 4)
    assert isinstance(many, kernels.DenseCode) and many.pairs == 32
    none = kernels.aux_code(torch.full((8, 24), -1.0), 24)
    assert isinstance(none, kernels.RaggedCode) and none.pairs == 0
    W, g = torch.randn(24, 5), torch.randn(8, 5)
    assert not none.decode(none.values(pre), W).any() and none.grad_acts(g, W).shape == (0,)
    assert none.sum_by_latent(torch.zeros(0), g).shape == (24, 5)


