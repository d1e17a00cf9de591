"""Sparse TopK training kernels: a dense encoder forward, everything after it O(k d) per token.

In a TopK SAE only ``k`` of ``d_sae`` latents per token are non-zero, so the decoder, its gradients and the
encoder's weight gradient need only the selected (token, latent) pairs:

* decode ``x_hat[t] = sum_s vals[t, s] W_dec[idx[t, s]]``: ``F.embedding_bag`` with per-sample weights;
* ``grad vals[t, s] = g[t] . W_dec[idx[t, s]]``: a sampled dense-dense product (SDDMM) on the k-sparse pattern;
* ``grad W[j] = sum_{(t, s): idx[t, s] = j} w[t, s] src[t]`` (decoder rows, encoder columns): the same pairs
  sorted by latent, summed by ``F.embedding_bag`` with one bag per latent (:func:`bags_by_latent`).

Every kernel is checked against the plain dense computation in tests/test_kernels.py (hypothesis inputs).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: Columns per group in :func:`topk`'s first pass (the group maxima); 16 minimises m / G + k G for our sizes.
TOPK_GROUP = 16


def topk(pre: Tensor, k: int, group: int = TOPK_GROUP) -> tuple[Tensor, Tensor]:
    """Exact ``pre.topk(k, dim=-1, sorted=False)`` of ``pre`` [n, m] in two small selections.

    CPU ``torch.topk`` costs about as much as the encoder matmul on a [4096, 12288] input. Split each row into
    ``group`` x ``m / group`` (group ``c`` holds columns ``c, c + m/group, ...``), take the top ``k`` groups by
    their maxima, then the top ``k`` of those groups' ``k * group`` entries. Exact: any entry outside the top
    groups is at most the k-th group maximum, which is at most the k-th largest entry (ties may pick another
    index of an equal value, as ``torch.topk`` itself may). Returns ``(values, indices)``, each [n, k].
    """
    n, m = pre.shape
    if m % group or 2 * k * group > m or not pre.is_contiguous():
        return pre.topk(k, dim=-1, sorted=False)
    c = m // group
    group_max = pre.view(n, group, c).amax(dim=1)  # strided groups: a vectorised max over `group` slices
    top_groups = group_max.topk(k, dim=-1, sorted=False).indices
    candidates = (top_groups[:, :, None] + c * torch.arange(group, device=pre.device)).view(n, k * group)
    vals, j = pre.gather(1, candidates).topk(k, dim=-1, sorted=False)
    return vals, candidates.gather(1, j)


class Bags(NamedTuple):
    """The (token, slot) pairs of an index matrix [n, k] grouped by latent, for :func:`sum_by_latent`."""

    tokens: Tensor
    """[n k] token of each pair, pairs ordered by latent."""
    offsets: Tensor
    """[d_sae] start of each latent's run in ``tokens`` (empty runs for latents nobody selected)."""
    order: Tensor
    """[n k] position of each ordered pair in ``idx.flatten()``."""


@contextmanager
def serial():
    """Run small index ops on one thread: on a busy CPU an OpenMP ``argsort`` of 131k indices took 290 ms with
    two threads (waiting for a descheduled peer) and 5 ms with one; an ``index_add_`` of 246 rows of 768 took
    80-116 ms with two and 0.1 ms with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bags_by_latent(idx: Tensor, d_sae: int) -> Bags:
    """Group the pairs of ``idx`` [n, k] (latent indices) by latent; O(n k log(n k))."""
    return group_by_latent(idx.reshape(-1), d_sae, lambda order: order // idx.shape[1])


def group_by_latent(latents: Tensor, m: int, token_of) -> Bags:
    """Group pairs by latent: ``latents`` [pairs] of ``m``, ``token_of(order)`` the tokens of the pairs at
    positions ``order``."""
    with serial():
        order = latents.argsort()
        counts = torch.bincount(latents, minlength=m)
        return Bags(token_of(order), counts.cumsum(0) - counts, order)


def sum_by_latent(bags: Bags, weights: Tensor, src: Tensor) -> Tensor:
    """``out[j] = sum_{(t, s): idx[t, s] = j} weights[t, s] * src[t]``, [d_sae, d] from ``weights`` [n, k] and
    ``src`` [n, d]: the transposed product ``S^T src`` of the k-sparse ``S`` in O(n k d)."""
    w = weights.reshape(-1)[bags.order].to(src.dtype)
    return F.embedding_bag(bags.tokens, src, bags.offsets, mode="sum", per_sample_weights=w)


def sampled_dot(idx: Tensor, a: Tensor, W: Tensor) -> Tensor:
    """``out[t, s] = a[t] . W[idx[t, s]]``, [n, k], from ``a`` [n, d] and ``W`` [m, d]: ``(a @ W.T)`` only
    where it is needed (SDDMM on the CSR pattern of ``idx``), O(n k d)."""
    n, k = idx.shape
    crow = torch.arange(0, n * k + 1, k, device=idx.device)
    return sampled_dot_csr(crow, idx.reshape(-1), a, W).view(n, k)


def sampled_dot_csr(crow: Tensor, col: Tensor, a: Tensor, W: Tensor) -> Tensor:
    """``out[p] = a[t] . W[col[p]]`` for the pairs ``p`` of each row ``t`` (``crow[t] <= p < crow[t + 1]``, CSR),
    [len(col)], from ``a`` [n, d] and ``W`` [m, d]: a ragged :func:`sampled_dot`."""
    a, W = a.float(), W.float()
    if not len(col):
        return a.new_zeros(0)
    if a.device.type in ("cpu", "cuda"):
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(len(col), device=a.device),
                                              (len(crow) - 1, W.shape[0]), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, a, W.T, beta=0.0).values()
    rows = torch.repeat_interleave(torch.arange(len(crow) - 1, device=a.device), crow.diff())  # pragma: no cover
    return (a[rows] * W[col]).sum(dim=1)  # pragma: no cover - other backends


def encoder_rows(W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """The encoder as latent rows with the bias appended, ``[W_enc^T | b_enc]`` [d_sae, d_in + 1] (differentiable):
    with :func:`with_ones` inputs, one plain matmul gives the biased pre-activations. A bias given to ``addmm``
    is first broadcast to the whole [n, d_sae] output (a copy the size of the product, ~6 % of a CPU step); as
    one more input dimension it costs one column."""
    return torch.cat([W_enc.T, b_enc[:, None]], dim=1)


def with_ones(x: Tensor) -> Tensor:
    """``[x | 1]`` [n, d + 1]: the inputs that multiply :func:`encoder_rows`."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


#: AuxK's selected (token, dead latent) pairs go through the ragged kernels (:class:`RaggedCode`) while at most
#: this share of the [n, n_dead] dead pre-activations is selected, through dense products (:class:`DenseCode`)
#: beyond: on the CPU a selected pair costs about ten entries of a dense product (docs/train.md, "AuxK").
RAGGED_DENSITY = 1 / 12


class DenseCode:
    """AuxK's selection as a dense 0/1 mask [n, m] over the dead latents: its products are plain matmuls."""

    def __init__(self, mask: Tensor):
        self.mask = mask.float()

    def values(self, pre: Tensor) -> Tensor:
        """The pre-activations [n, m] on this code's pattern: all of them."""
        return pre

    def activate(self, values: Tensor) -> Tensor:
        """The activations [n, m]: the selected values, others 0 (differentiable)."""
        return values * self.mask

    def decode(self, acts: Tensor, W: Tensor) -> Tensor:
        """``acts @ W``, [n, d], from the latents' rows ``W`` [m, d]."""
        return acts @ W

    def grad_acts(self, g: Tensor, W: Tensor) -> Tensor:
        """The gradient of :meth:`decode`'s ``acts`` for the output gradient ``g`` [n, d]."""
        return g @ W.T

    def sum_by_latent(self, w: Tensor, src: Tensor) -> Tensor:
        """``w^T @ src``, [m, d], from ``w`` (activations or their gradient) and ``src`` [n, d]."""
        return w.T @ src

    @property
    def pairs(self) -> int:
        return int(self.mask.sum())


class RaggedCode:
    """AuxK's selection as its (token, latent) pairs ordered by token, each token's run its own length: products
    through ``embedding_bag`` and SDDMM in O(pairs x d), as the main TopK code's."""

    def __init__(self, mask: Tensor):
        n, m = mask.shape
        with serial():
            self.flat = mask.reshape(-1).nonzero().squeeze(1)
            tokens, self.latents = self.flat // m, self.flat % m
            counts = torch.bincount(tokens, minlength=n)
            self.crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.bags = group_by_latent(self.latents, m, lambda order: tokens[order])

    def values(self, pre: Tensor) -> Tensor:
        """The selected pre-activations [pairs] of ``pre`` [n, m]."""
        return pre.reshape(-1)[self.flat]

    def activate(self, values: Tensor) -> Tensor:
        """The activations [pairs]: the values themselves (every selected value is positive)."""
        return values

    def decode(self, acts: Tensor, W: Tensor) -> Tensor:
        """``sum_p acts[p] W[latent[p]]`` per token, [n, d]."""
        return F.embedding_bag(self.latents, W, self.crow[:-1], mode="sum", per_sample_weights=acts)

    def grad_acts(self, g: Tensor, W: Tensor) -> Tensor:
        """The gradient of :meth:`decode`'s ``acts`` for the output gradient ``g`` [n, d]: [pairs]."""
        return sampled_dot_csr(self.crow, self.latents, g, W)

    def sum_by_latent(self, w: Tensor, src: Tensor) -> Tensor:
        """``out[j] = sum_{p: latent[p] = j} w[p] src[token[p]]``, [m, d]."""
        return sum_by_latent(self.bags, w, src)

    @property
    def pairs(self) -> int:
        return len(self.flat)


AuxCode = DenseCode | RaggedCode


def aux_code(dead_pre: Tensor, aux_k: int) -> AuxCode:
    """AuxK's selection from the dead latents' pre-activations [n, n_dead]: each token's top ``aux_k`` that are
    positive (an activation is ReLU'd, so the others contribute nothing and take no gradient), as a
    :class:`RaggedCode` while few are selected, else a :class:`DenseCode`."""
    with torch.no_grad():
        if aux_k < dead_pre.shape[1]:
            top, j = dead_pre.topk(aux_k, dim=-1, sorted=False)
            mask = torch.zeros_like(dead_pre, dtype=torch.bool).scatter_(1, j, top > 0)
        else:
            mask = dead_pre > 0
        if int(mask.sum()) <= RAGGED_DENSITY * mask.numel():
            return RaggedCode(mask)
        return DenseCode(mask)


class EncoderValues(torch.autograd.Function):
    """``vals[t, s] = [x[t] - b_dec | 1] . enc[idx[t, s]]`` (``enc`` = :func:`encoder_rows`: the selected latents'
    encoder columns and biases) with a k-sparse backward, and optionally AuxK's pre-activations of the latents
    ``dead`` on the pattern of ``aux`` (an :data:`AuxCode`), taken from ``dead_pre`` [n, n_dead].

    The forward takes the values already computed by the dense encoder matmul (so it costs nothing); the
    backward gives ``enc``'s gradient on the selected rows only, O(n k d) instead of O(n d_sae d), the bias's
    with it (the ones column of the inputs). The dead rows' gradients are added in place to that same gradient,
    so AuxK costs its own small products and no full-size gradient of its own. ``b_dec`` takes no gradient
    through AuxK (it leaves the decoder bias alone, as sparsify does: see :func:`sae_vit.core.train.auxk_loss`).
    """

    @staticmethod
    def forward(ctx, x, b_dec, enc, idx, vals, bags, x_a=None, dead=None, aux=None, dead_pre=None):
        x_a = with_ones((x - b_dec).float()) if x_a is None else x_a
        ctx.save_for_backward(x_a, enc, idx, dead)
        ctx.bags, ctx.aux = bags, aux
        vals = vals.to(torch.float32, copy=True)
        if dead is None:
            return vals, None
        return vals, aux.values(dead_pre).to(torch.float32, copy=True)

    @staticmethod
    def backward(ctx, grad, grad_aux=None):
        x_a, enc, idx, dead = ctx.saved_tensors
        grad = grad.float()
        d_sae, d_in = enc.shape[0], enc.shape[1] - 1
        aux = dead is not None and grad_aux is not None
        g_x = g_b_dec = g_enc = None
        if aux:
            grad_aux = grad_aux.float()
        if ctx.needs_input_grad[1]:
            with serial():
                g_latent = torch.zeros(d_sae, device=grad.device).index_add_(0, idx.reshape(-1), grad.reshape(-1))
            g_b_dec = -(enc[:, :d_in].T.float() @ g_latent)
        if ctx.needs_input_grad[2]:
            g_enc = sum_by_latent(ctx.bags, grad, x_a)  # [d_sae, d_in + 1]: the last column is the bias's
            if aux:
                contribution = ctx.aux.sum_by_latent(grad_aux, x_a)
                with serial():
                    g_enc.index_add_(0, dead, contribution)
        if ctx.needs_input_grad[0]:
            W_rows = enc[:, :d_in].float().contiguous()
            g_x = F.embedding_bag(idx, W_rows, per_sample_weights=grad, mode="sum")
            if aux:
                g_x += ctx.aux.decode(grad_aux, W_rows.index_select(0, dead))
        return g_x, g_b_dec, g_enc, None, None, None, None, None, None, None


class SparseDecode(torch.autograd.Function):
    """``x_hat[t] = sum_s vals[t, s] W_dec[idx[t, s]]`` (no bias), forward and backward O(n k d), and optionally
    AuxK's reconstruction ``e_hat`` from the activations ``aux_acts`` of the latents ``dead`` on the pattern of
    ``aux`` (an :data:`AuxCode`), whose decoder gradient lands in place in the rows of the same gradient."""

    @staticmethod
    def forward(ctx, idx, vals, W_dec, bags, dead=None, aux=None, aux_acts=None):
        vals = vals.float()
        aux_acts = None if aux_acts is None else aux_acts.float()
        ctx.save_for_backward(idx, vals, W_dec, dead, aux_acts)
        ctx.bags, ctx.aux = bags, aux
        x_hat = F.embedding_bag(idx, W_dec.float(), per_sample_weights=vals, mode="sum")
        if dead is None:
            return x_hat, None
        return x_hat, aux.decode(aux_acts, W_dec.float().index_select(0, dead))

    @staticmethod
    def backward(ctx, grad, grad_aux=None):
        idx, vals, W_dec, dead, aux_acts = ctx.saved_tensors
        grad = grad.float().contiguous()
        aux = dead is not None and grad_aux is not None
        if aux:
            grad_aux = grad_aux.float().contiguous()
        g_vals = sampled_dot(idx, grad, W_dec) if ctx.needs_input_grad[1] else None
        g_W = g_aux_acts = None
        if ctx.needs_input_grad[2]:
            g_W = sum_by_latent(ctx.bags, vals, grad)
            if aux:
                contribution = ctx.aux.sum_by_latent(aux_acts, grad_aux)
                with serial():
                    g_W.index_add_(0, dead, contribution)
        if aux and ctx.needs_input_grad[6]:
            g_aux_acts = ctx.aux.grad_acts(grad_aux, W_dec.float().index_select(0, dead))
        return None, g_vals, g_W, None, None, None, g_aux_acts


class Encoded(NamedTuple):
    """What :func:`topk_encode` returns."""

    vals: Tensor
    """[n, k] fp32 pre-activations of the selected latents (differentiable; apply ReLU yourself)."""
    idx: Tensor
    """[n, k] int64 indices of the selected latents."""
    bags: Bags
    """``idx`` grouped by latent, shared by the encoder's and the decoder's backward."""
    aux: AuxCode | None = None
    """AuxK's selection among the latents ``dead`` given to :func:`topk_encode` (:func:`aux_code`), or ``None``."""
    aux_pre: Tensor | None = None
    """fp32 pre-activations of the dead latents on ``aux``'s pattern (differentiable to ``W_enc``, ``b_enc`` and
    ``x``, not to ``b_dec``); ``aux.activate(aux_pre)`` are AuxK's activations."""


class Workspace:
    """Buffers kept from one training step to the next. A CPU tensor larger than glibc's mmap threshold (at most
    32 MiB) goes back to the OS when freed and is faulted in again page by page when next allocated: for the
    [4096, 12288] fp32 pre-activations of a step that costs ~75 ms, 14 % of the encoder matmul itself
    (docs/benchmarks.md, "Training throughput")."""

    def __init__(self):
        self._buffers: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor of ``shape``: the buffer ``name`` of that dtype and device, grown
        when too small (so SAEs of different sizes sharing a workspace hold one buffer, the largest)."""
        numel, key = math.prod(shape), (name, dtype, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            self._buffers.pop(key, None)  # free the old buffer before allocating its successor
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


def encoder_pre(x: Tensor, enc: Tensor, b_dec: Tensor, dtype: torch.dtype = torch.float32,
                workspace: Workspace | None = None) -> Tensor:
    """Dense pre-activations ``[x - b_dec | 1] @ enc^T`` = ``(x - b_dec) @ W_enc + b_enc``, [n, d_sae], from
    ``enc`` = :func:`encoder_rows`, computed (and returned) in ``dtype``, without autograd: the one O(n d_sae d)
    product of a TopK step (:func:`topk_encode_rows` makes the same call), hence the bound on its speed that
    benchmarks/bench_train.py reports. With a ``workspace`` the result is its buffer ``"pre"``, valid until the
    next call with the same workspace."""
    with torch.no_grad():
        return _encoder_pre(with_ones((x - b_dec).float()), enc, dtype, workspace)


def _encoder_pre(x_a: Tensor, enc: Tensor, dtype: torch.dtype, workspace: Workspace | None) -> Tensor:
    a, b = x_a.to(dtype), enc.to(dtype).T
    if workspace is None:
        return a @ b
    return torch.mm(a, b, out=workspace.get("pre", (a.shape[0], b.shape[1]), dtype, a.device))


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                dtype: torch.dtype = torch.float32, dead: Tensor | None = None, aux_k: int | None = None) -> Encoded:
    """:func:`topk_encode_rows` for an encoder given as ``W_enc`` [d_in, d_sae] and ``b_enc`` [d_sae] (gradients
    reach both through :func:`encoder_rows`; the trainer keeps its encoder in the rows layout and skips the copy)."""
    return topk_encode_rows(x, encoder_rows(W_enc, b_enc), b_dec, k, dtype, dead, aux_k=aux_k)


def topk_encode_rows(x: Tensor, enc: Tensor, b_dec: Tensor, k: int, dtype: torch.dtype = torch.float32,
                     dead: Tensor | None = None, workspace: Workspace | None = None,
                     aux_k: int | None = None) -> Encoded:
    """TopK encoder of ``x`` [n, d_in] with ``enc`` = :func:`encoder_rows` [d_sae, d_in + 1]: dense forward in
    ``dtype``, k-sparse backward to ``enc`` and ``b_dec`` (and ``x`` when it needs a gradient). The [n, d_sae]
    pre-activations are freed on return.

    ``dead`` [n_dead] int64 latent indices: also select AuxK's activations among them, each token's top
    ``aux_k`` positive pre-activations (all positive ones when ``aux_k`` is ``None``), from the columns of the
    same product (``Encoded.aux``, ``Encoded.aux_pre``); pass them on to :func:`decode_with_dead`.
    ``workspace``: where the pre-activations are made (:class:`Workspace`; the trainer keeps one).
    """
    aux = dead_pre = None
    with torch.no_grad():
        x_a = with_ones((x - b_dec).float())
        pre = _encoder_pre(x_a, enc, dtype, workspace)
        if dead is not None:
            # The dead columns of the product already made: a gather costs a fraction of their own matmul.
            dead_pre = pre.index_select(1, dead)
            aux = aux_code(dead_pre, aux_k or len(dead))
        raw, idx = topk(pre, k)
        del pre
    bags = bags_by_latent(idx, enc.shape[0])
    vals, aux_pre = EncoderValues.apply(x, b_dec, enc, idx, raw, bags, x_a, dead, aux, dead_pre)
    return Encoded(vals, idx, bags, aux, aux_pre)


def decode(idx: Tensor, vals: Tensor, W_dec: Tensor, bags: Bags | None = None) -> Tensor:
    """``sum_s vals[:, s] W_dec[idx[:, s]]``, [n, d_in] fp32, with a k-sparse backward to ``vals`` and ``W_dec``."""
    if bags is None:
        bags = bags_by_latent(idx, W_dec.shape[0])
    return SparseDecode.apply(idx, vals, W_dec, bags)[0]


def decode_with_dead(idx: Tensor, vals: Tensor, W_dec: Tensor, bags: Bags, dead: Tensor, aux: AuxCode,
                     aux_acts: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`decode`, and AuxK's reconstruction from the activations ``aux_acts`` of the latents ``dead`` on
    ``aux``'s pattern (``Encoded.aux.activate(Encoded.aux_pre)``): ``(x_hat, e_hat)``, each [n, d_in] fp32,
    differentiable to ``vals``, ``aux_acts`` and ``W_dec``."""
    return SparseDecode.apply(idx, vals, W_dec, bags, dead, aux, aux_acts)
