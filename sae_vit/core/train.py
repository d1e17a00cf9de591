"""The SAE training loop: initialisation, loss, AdamW with warm-up, a held peak and a decay, dead latents (AuxK), evaluation.

The trainer depends only on an iterator of activation batches [n, d_in] and an optional held-out tensor (the
seam SAELens uses), so one loop serves the activation cache, a live stream and the tests alike. It never
prints: progress goes to a callback as :class:`TrainState`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_vit.core import kernels
from sae_vit.core.dist import distributed, resolve_device
from sae_vit.core.errors import SaeVitError
from sae_vit.core.metrics import evaluate
from sae_vit.core.sae import ARCHITECTURES, NORMALIZATIONS, SAE, SAEConfig

SCHEDULES = ("wsd", "cosine", "constant", "linear")
B_DEC_INITS = ("mean", "geometric_median", "zeros")
DTYPES = ("fp32", "bf16")


#: ``lr="auto"`` for TopK: the peak AdamW rate of a 2**14-latent SAE on 768-d activations at 4,096 tokens per
#: step. It scales as 1 / sqrt(d_sae) (Gao et al.'s fit), 1 / sqrt(d_in) (Adam moves every weight by about
#: ``lr``, and a unit decoder row's elements are ~1 / sqrt(d_in)) and sqrt(batch_size) (Adam's square-root rule).
#: Chosen on tuning data the benchmark never scores (docs/benchmarks.md, "Training quality").
LR_AT_16K = 1.75e-3
#: AdamW's betas. beta2 0.99 (not torch's 0.999) lets the second moments follow the fast early changes of a
#: short run; it gave 1-4 % lower FVU on the tuning data and no instability.
ADAM_BETAS = (0.9, 0.99)
#: ``schedule="wsd"`` decays the learning rate linearly to 0 over this last fraction of the run.
DECAY_FRACTION = 0.2
#: ``warmup_steps=None``: warm up over this fraction of the run, at most :data:`MAX_WARMUP_STEPS` steps.
WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 1000
#: ``dead_tokens=None`` for TopK: a latent is dead once it has missed this many of its average firings, i.e.
#: after ``DEAD_FIRINGS * d_sae / k`` tokens (an average latent fires on ``k / d_sae`` of the tokens).
DEAD_FIRINGS = 256
#: ...and never later than this (OpenAI's and sparsify's fixed window) nor after a tenth of the run.
MAX_DEAD_TOKENS = 10_000_000

#: Training length when none is given: 10 epochs (the paper's recipe) but at least this many tokens, so that
#: small CLS-only caches still train for enough steps.
MIN_DEFAULT_TOKENS = 1_000_000


def training_length(n_train: int, n_tokens: int | None = None, epochs: float | None = None) -> int:
    """Training tokens for a stream of ``n_train`` tokens: ``n_tokens`` when given, else ``epochs`` passes,
    else 10 epochs but at least :data:`MIN_DEFAULT_TOKENS`."""
    if n_tokens is not None:
        return n_tokens
    if epochs is not None:
        return int(epochs * n_train)
    return max(10 * n_train, MIN_DEFAULT_TOKENS)


@dataclass
class TrainConfig:
    """How to train one SAE. Defaults train a TopK SAE; docs/train.md gives the paper's ReLU recipe."""

    architecture: str = "topk"
    """``topk`` (L0 set by ``k``, AuxK for dead latents) or ``relu`` (ReLU with an L1 penalty)."""
    expansion: int = 16
    """Dictionary size as a multiple of ``d_in`` (the paper's SAEs: 64); ignored when ``d_sae`` is given."""
    d_sae: int | None = None
    """Number of latents; ``None`` means ``expansion * d_in``."""
    k: int = 32
    """Active latents per token for ``topk``."""
    l1_coefficient: float = 8e-5
    """L1 penalty weight for ``relu`` (the paper's SAEs: 1e-5 .. 1e-4), on the paper's normalised MSE."""
    l1_warmup_steps: int | None = None
    """Steps over which the L1 weight ramps up linearly from 0 (``relu``); ``None`` means 5 % of the run."""
    normalization: str = "none"
    """Input normalisation: ``none``, ``layer_norm`` (per token, as the paper's SAEs) or ``constant``
    (one scale so that the mean squared norm of the inputs is ``d_in``)."""
    lr: float | str = "auto"
    """Peak learning rate, or ``auto``: for TopK ``LR_AT_16K * sqrt(2**14 / d_sae) * sqrt(768 / d_in) *
    sqrt(batch_size / 4096)`` (1.75e-3 at 16k latents on ViT-B's 768-d stream), 4e-4 (the paper's) for ReLU."""
    batch_size: int = 4096
    """Tokens per optimisation step; incoming batches are re-chunked to this size."""
    n_tokens: int = 10_000_000
    """Training tokens in total; the run stops earlier if the batches run out."""
    warmup_steps: int | None = None
    """Linear learning-rate warm-up steps (capped at a fifth of the run so short runs reach the peak);
    ``None`` means 5 % of the run, at most 1,000 steps."""
    schedule: str = "wsd"
    """After warm-up: ``wsd`` (constant, then linear decay to 0 over the last 20 % of the run), ``cosine`` or
    ``linear`` decay to 0 from the peak, or ``constant``."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    b_dec_init: str = "mean"
    """Initial decoder bias from the init activations: ``mean``, ``geometric_median`` (Weiszfeld) or ``zeros``."""
    aux_k: int | None = None
    """Latents in the AuxK reconstruction of the residual by dead latents (``topk``); ``None`` means ``d_in // 2``."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss; 0 disables it."""
    dead_tokens: int | None = None
    """A latent that has not fired for this many tokens is dead. ``None``: for TopK ``256 * d_sae / k`` (256 of
    an average latent's firings), at most a tenth of the run and 10M; for ReLU a tenth of the run, at most 10M;
    never less than one batch."""
    dtype: str = "bf16"
    """Compute precision: ``bf16`` autocast (weights and optimiser state stay fp32) or ``fp32``."""
    seed: int = 0
    """Seed for the initial weights."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:1`` ... or ``auto`` (CUDA when available)."""
    log_every: int = 10
    """Steps between calls of the progress callback."""

    def validate(self) -> None:
        """Raise :class:`SaeVitError` naming the first option that is out of range."""
        choices = {
            "architecture": ARCHITECTURES, "normalization": NORMALIZATIONS, "schedule": SCHEDULES,
            "b_dec_init": B_DEC_INITS, "dtype": DTYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SaeVitError(f"Unknown {name} {getattr(self, name)!r}; use one of {', '.join(allowed)}.")
        if isinstance(self.lr, str) and self.lr != "auto" or not isinstance(self.lr, str) and self.lr <= 0:
            raise SaeVitError(f"Learning rate must be positive or 'auto' (got {self.lr!r}).")
        for name in ("expansion", "k", "batch_size", "n_tokens", "log_every", "d_sae", "dead_tokens", "aux_k"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise SaeVitError(f"{name} must be positive (got {getattr(self, name)}).")
        for name in ("warmup_steps", "grad_clip", "weight_decay", "aux_coef", "l1_coefficient"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise SaeVitError(f"{name} must not be negative (got {getattr(self, name)}).")


class TrainState(NamedTuple):
    """What the progress callback sees every ``log_every`` steps (metrics on the current batch)."""

    step: int
    """Optimisation steps done."""
    n_steps: int
    """Planned steps (``n_tokens / batch_size``)."""
    tokens: int
    """Training tokens seen."""
    loss: float
    """Total loss of the last step."""
    l0: float
    """Mean active latents per token on the last batch."""
    fvu: float
    """Fraction of variance unexplained on the last batch."""
    dead_fraction: float
    """Fraction of latents that have not fired for ``dead_tokens`` tokens."""


class StepOutput(NamedTuple):
    """Result of :func:`sae_loss` on one batch."""

    loss: Tensor
    """Scalar loss to minimise."""
    fvu: Tensor
    """FVU of the batch (detached)."""
    l0: Tensor
    """Mean active latents per token (detached)."""
    fired: Tensor
    """[d_sae] bool: latents that fired on at least one token of the batch."""


def resolve(cfg: TrainConfig, d_in: int) -> TrainConfig:
    """A copy of ``cfg`` with every ``None`` / ``auto`` replaced by the value it stands for."""
    cfg.validate()
    d_sae = cfg.d_sae or cfg.expansion * d_in
    n_steps = math.ceil(cfg.n_tokens / cfg.batch_size)
    if cfg.architecture == "topk" and cfg.k > d_sae:
        raise SaeVitError(f"k={cfg.k} exceeds the {d_sae} latents; lower --k or raise --expansion or --d-sae.")
    device = str(resolve_device(cfg.device))
    return TrainConfig(**{
        **asdict(cfg), "d_sae": d_sae, "lr": float(auto_lr(cfg, d_in, d_sae) if cfg.lr == "auto" else cfg.lr),
        "device": device,
        "warmup_steps": cfg.warmup_steps if cfg.warmup_steps is not None else
        min(MAX_WARMUP_STEPS, round(WARMUP_FRACTION * n_steps)),
        "l1_warmup_steps": cfg.l1_warmup_steps if cfg.l1_warmup_steps is not None else n_steps // 20,
        "aux_k": cfg.aux_k or max(1, d_in // 2),
        "dead_tokens": cfg.dead_tokens or default_dead_tokens(cfg, d_sae),
    })


def auto_lr(cfg: TrainConfig, d_in: int, d_sae: int) -> float:
    """The learning rate ``lr="auto"`` stands for (see :attr:`TrainConfig.lr`)."""
    if cfg.architecture != "topk":
        return 4e-4
    return LR_AT_16K * math.sqrt(2**14 / d_sae) * math.sqrt(768 / d_in) * math.sqrt(cfg.batch_size / 4096)


def default_dead_tokens(cfg: TrainConfig, d_sae: int) -> int:
    """The dead-latent window ``dead_tokens=None`` stands for (see :attr:`TrainConfig.dead_tokens`).

    A fixed window (10M tokens in OpenAI's and sparsify's recipes) never fires in short runs and, in a small
    dictionary whose latents each fire every few dozen tokens, waits thousands of firings before AuxK helps;
    counting in a latent's own expected firings fits both ends.
    """
    window = min(MAX_DEAD_TOKENS, cfg.n_tokens // 10)
    if cfg.architecture == "topk":
        window = min(window, DEAD_FIRINGS * d_sae // cfg.k)
    return max(window, cfg.batch_size)


def rebatch(batches: Iterable[Tensor], batch_size: int, d_in: int) -> Iterator[Tensor]:
    """Re-chunk an iterable of [n_i, d_in] tensors into [batch_size, d_in] ones (the last may be shorter)."""
    buf: list[Tensor] = []
    held = 0
    for batch in batches:
        if batch.ndim != 2 or batch.shape[1] != d_in:
            raise SaeVitError(
                f"Activation batch has shape {tuple(batch.shape)}, expected [n, {d_in}]; check --layer/--site."
            )
        buf.append(batch)
        held += batch.shape[0]
        while held >= batch_size:
            joined = buf[0] if len(buf) == 1 else torch.cat(buf)
            yield joined[:batch_size]
            buf, held = [joined[batch_size:]], held - batch_size
    if held:
        yield torch.cat(buf)


def geometric_median(x: Tensor, n_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Geometric median of the rows of ``x`` [n, d] by Weiszfeld's algorithm, [d]."""
    x = x.double()
    y = x.mean(dim=0)
    for _ in range(n_iter):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_next = (w[:, None] * x).sum(dim=0) / w.sum()
        if (y_next - y).norm() <= tol * y.norm().clamp_min(1.0):
            return y_next.float()
        y = y_next
    return y.float()


@torch.no_grad()
def init_sae(d_in: int, cfg: TrainConfig, init_acts: Tensor, sae_config_extra: dict | None = None) -> SAE:
    """A fresh SAE for a resolved ``cfg``: random unit decoder rows, encoder = decoder transpose, the constant
    scale and ``b_dec`` (mean / geometric median / zeros) measured on ``init_acts`` [n, d_in]."""
    sae = SAE(SAEConfig(
        d_in=d_in, d_sae=cfg.d_sae, architecture=cfg.architecture,
        k=cfg.k if cfg.architecture == "topk" else None,
        l1_coefficient=cfg.l1_coefficient if cfg.architecture == "relu" else None,
        normalization=cfg.normalization, **(sae_config_extra or {}),
    ))
    sae.reset_parameters(torch.Generator().manual_seed(cfg.seed))
    x = init_acts.float()
    if cfg.normalization == "constant":
        sae.scale.fill_(math.sqrt(d_in / x.pow(2).sum(dim=1).mean().clamp_min(1e-12).item()))
    xn, _ = sae.normalize(x)
    if cfg.b_dec_init == "mean":
        sae.b_dec.copy_(xn.mean(dim=0))
    elif cfg.b_dec_init == "geometric_median":
        sae.b_dec.copy_(geometric_median(xn))
    return sae.to(cfg.device)


def lr_factor(step: int, n_steps: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at ``step`` of ``n_steps``: linear warm-up, then the configured schedule
    (``cfg`` resolved, or with an explicit ``warmup_steps``)."""
    warmup = min(cfg.warmup_steps or 0, n_steps // 5)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay_start = max(warmup, n_steps - max(1, round(DECAY_FRACTION * n_steps)))
        return 1.0 if step < decay_start else max(0.0, (n_steps - step) / (n_steps - decay_start))
    progress = min(1.0, (step - warmup) / max(1, n_steps - warmup))
    return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def compute_dtype(device: torch.device) -> torch.dtype:
    """The matmul dtype the caller asked for: bf16 inside a bf16 ``torch.autocast`` on ``device``, else fp32."""
    if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def auxk_error(sae: SAE, e_hat: Tensor, residual: Tensor, ctx, n_dead: int, aux_k: int) -> Tensor:
    """AuxK's loss from its reconstruction ``e_hat`` [n, d_in] (normalised space) of the main ``residual``
    [n, d_in] (activation space, detached): squared error over the residual's own centred sum of squares,
    scaled down when fewer than ``aux_k`` latents are dead, as in sparsify."""
    # A change in normalised space maps back without the offsets, as in SAE.edit.
    if sae.cfg.normalization == "layer_norm":
        e_hat = e_hat * ctx[1]
    elif sae.cfg.normalization == "constant":
        e_hat = e_hat / sae.scale
    err = F.mse_loss(e_hat.float(), residual, reduction="sum")
    return err / (residual - residual.mean(dim=0)).pow(2).sum().clamp_min(1e-12) * min(1.0, n_dead / aux_k)


def auxk_loss(sae: SAE, xn: Tensor, residual: Tensor, ctx, dead: Tensor, aux_k: int,
              enc: Tensor | None = None) -> Tensor:
    """AuxK (Gao et al. 2024): the top ``aux_k`` dead latents reconstruct the main residual ``x - x_hat``.

    ``xn`` [n, d_in] normalised inputs, ``residual`` [n, d_in] (detached), ``dead`` [d_sae] bool. Only the dead
    latents' pre-activations are computed, [n, n_dead], by their own matmul; the top ``aux_k`` of each token
    (all of them when fewer are dead) are decoded through the k-sparse kernels. The loss moves the dead latents' encoder columns, encoder
    biases and decoder rows, not ``b_dec``: the decoder bias serves every token's reconstruction, which the
    auxiliary loss should not trade away (sparsify's AuxK leaves it alone too; OpenAI's reference lets it
    move). ``enc`` stands in for ``sae``'s encoder (see :func:`sae_loss`).

    This stand-alone form is for callers outside the trainer (and the tests' reference): the trainer computes
    the same loss inside the main encoder and decoder kernels (:func:`sae_loss`), its selection gathered from the
    encoder product already made and its gradients added in place to the main ones.
    """
    enc = kernels.encoder_rows(sae.W_enc, sae.b_enc) if enc is None else enc
    dead_idx = dead.nonzero().squeeze(1)
    n_dead = len(dead_idx)
    b_dec = sae.b_dec.detach()
    x_a = kernels.with_ones((xn - b_dec).float())
    with torch.no_grad():
        raw, j = (x_a @ enc[dead_idx].T).topk(min(aux_k, n_dead), dim=-1, sorted=False)
    idx = dead_idx[j]
    bags = kernels.bags_by_latent(idx, sae.cfg.d_sae)
    vals = kernels.EncoderValues.apply(xn, b_dec, enc, idx, raw, bags, x_a)[0].relu()
    e_hat = kernels.decode(idx, vals, sae.W_dec, bags)
    return auxk_error(sae, e_hat, residual, ctx, n_dead, aux_k)


def sae_loss(sae: SAE, x: Tensor, cfg: TrainConfig, dead: Tensor, l1_weight: float,
             enc: Tensor | None = None, workspace: kernels.Workspace | None = None) -> StepOutput:
    """Loss of ``sae`` on ``x`` [n, d_in], in the activations' own space.

    TopK: FVU of the batch + ``aux_coef`` * AuxK (:func:`auxk_loss`, on the latents that ``dead`` [d_sae] bool
    marks), through the k-sparse kernels of :mod:`sae_vit.kernels` (the encoder matmul runs in bf16 inside a
    bf16 autocast). ReLU: the paper's (ViT-Prisma's) loss, the per-element squared error divided by each
    token's centred norm, averaged, + ``l1_weight`` * mean L1 of the latents (decoder rows have unit norm, so no
    decoder-norm weighting is needed). ``enc`` [d_sae, d_in + 1] (TopK only), if given, is used (and
    differentiated) instead of ``sae``'s encoder, as :func:`sae_vit.core.kernels.encoder_rows` lays it out: the
    trainer passes its own leaf, and a :class:`~sae_vit.core.kernels.Workspace` that keeps the pre-activations'
    buffer from step to step.
    """
    xn, ctx = sae.normalize(x)
    aux = cfg.architecture == "topk" and cfg.aux_coef > 0 and bool(dead.any())
    if cfg.architecture == "topk":
        dead_idx = dead.nonzero().squeeze(1) if aux else None
        enc_rows = kernels.encoder_rows(sae.W_enc, sae.b_enc) if enc is None else enc
        coded = kernels.topk_encode_rows(xn, enc_rows, sae.b_dec, sae.cfg.k, compute_dtype(x.device), dead_idx,
                                         workspace, cfg.aux_k)
        vals = coded.vals.relu()
        if aux:
            # AuxK inside the main kernels: its gradients land in place in the main ones (no full-size copies).
            x_hat_n, e_hat = kernels.decode_with_dead(coded.idx, vals, sae.W_dec, coded.bags, dead_idx, coded.aux,
                                                      coded.aux.activate(coded.aux_pre))
        else:
            x_hat_n = kernels.decode(coded.idx, vals, sae.W_dec, coded.bags)
        x_hat_n = x_hat_n + sae.b_dec
        active = vals > 0
        l0 = active.sum(dim=-1, dtype=torch.float32).mean()
        # A count, not a boolean-mask gather (a nonzero() that costs more than the count on a busy CPU).
        fired = torch.bincount(coded.idx.view(-1), weights=active.view(-1).float(), minlength=sae.cfg.d_sae) > 0
    else:
        # Same as sae.pre_activations(xn), but b_dec's gradient comes from a vector-matrix product instead of a
        # full [n, d_sae] x [d_sae, d_in] matmul (the inputs themselves need no gradient).
        f = (xn @ sae.W_enc + (sae.b_enc - sae.b_dec @ sae.W_enc)).relu()
        x_hat_n = sae.decode_normalized(f)
        l0 = (f > 0).sum(dim=-1, dtype=torch.float32).mean()
        fired = (f > 0).any(dim=0)
    x_hat = sae.denormalize(x_hat_n, ctx).float()
    with torch.no_grad():
        # Centred sum of squares; a norm of the centred batch is several times faster than var(dim=0) on CPU.
        total_var = torch.linalg.vector_norm(x - x.mean(dim=0)).square().clamp_min(1e-12)
    if cfg.architecture == "topk":
        fvu = F.mse_loss(x_hat, x, reduction="sum") / total_var  # one fused pass forward and backward
        loss = fvu
        if aux:
            residual = (x - x_hat).detach()
            loss = loss + cfg.aux_coef * auxk_error(sae, e_hat, residual, ctx, len(dead_idx), cfg.aux_k)
    else:
        sq_err = (x_hat - x).pow(2)
        fvu = sq_err.sum() / total_var
        recon = (sq_err / (x - x.mean(dim=0)).norm(dim=-1, keepdim=True).clamp_min(1e-12)).mean()
        loss = recon + l1_weight * f.float().sum(dim=-1).mean()
    return StepOutput(loss, fvu.detach(), l0.detach(), fired)


def optimizer_step(sae: SAE, opt: torch.optim.Optimizer, loss: Tensor, grad_clip: float) -> None:
    """Backward, keep decoder rows on the unit sphere (drop the radial gradient, then re-project), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        w, g = sae.W_dec, sae.W_dec.grad
        # g -= (g . w) w per row; the row dots as a batched matmul (linalg.vecdot makes a [d_sae, d_in] temporary)
        g.addcmul_(torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1, 1).neg_(), w)
    if grad_clip > 0:
        params = opt.param_groups[0]["params"]
        if sae.W_dec.device.type == "cpu":
            # Scale only when the norm exceeds the clip (rarely after the first steps): a pass over every
            # gradient saved. On a GPU the comparison would wait for the device, so scale always, as torch does.
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
            if norm > grad_clip:
                torch._foreach_mul_(grads, grad_clip / (norm + 1e-6))
        else:
            torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    opt.step()
    sae.normalize_decoder()


def rank_slice(batches: Iterable[Tensor], rank: int, world: int) -> Iterator[Tensor]:
    """Batch ``rank`` of every full group of ``world`` consecutive batches: disjoint slices of one stream that
    every rank sees alike, and the same number of steps on every rank (a short last group is dropped)."""
    if world == 1:
        yield from batches
        return
    group: list[Tensor] = []
    for batch in batches:
        group.append(batch)
        if len(group) == world:
            yield group[rank]
            group = []


class _Loss(torch.nn.Module):
    """:func:`sae_loss` as a module, so DistributedDataParallel can wrap it (and all-reduce the gradients).

    A TopK SAE's encoder is trained as ``enc`` [d_sae, d_in + 1], one row-major leaf holding each latent's encoder
    column and bias (:func:`sae_vit.core.kernels.encoder_rows`); ``sae.W_enc`` and ``sae.b_enc`` are views of it
    while training (:meth:`Trainer.finish` gives them storage of their own again) and take no gradient. The
    encoder matmul then needs no bias broadcast, the k-sparse encoder gradient (bias included) is computed as
    latent rows and lands in ``enc.grad`` without a transposing copy, and fused AdamW gets one contiguous tensor
    (on a column-major parameter it copies, ~5x slower at 768 x 12288). ReLU SAEs train their own parameters.
    The [n, d_sae] pre-activations are made in one buffer kept for the whole run (:class:`kernels.Workspace`;
    trainers that step one after another in one process share one, so it is held once).
    """

    def __init__(self, sae: SAE, cfg: TrainConfig, workspace: kernels.Workspace | None = None):
        super().__init__()
        self.sae, self.cfg = sae, cfg
        self.workspace = workspace or kernels.Workspace()
        self.enc = None
        if cfg.architecture == "topk":
            d_in = sae.cfg.d_in
            with torch.no_grad():
                rows = kernels.encoder_rows(sae.W_enc.data, sae.b_enc.data).contiguous()
                sae.W_enc.data, sae.b_enc.data = rows[:, :d_in].T, rows[:, d_in]
            self.enc = torch.nn.Parameter(rows)
            sae.W_enc.requires_grad_(False)
            sae.b_enc.requires_grad_(False)

    def forward(self, x: Tensor, dead: Tensor, l1_weight: float) -> StepOutput:
        return sae_loss(self.sae, x, self.cfg, dead, l1_weight, enc=self.enc, workspace=self.workspace)


def recipe(cfg: TrainConfig) -> dict:
    """What a checkpoint records of its (resolved) training config: every field but where it ran and how often it
    reported, as JSON types (so a recorded recipe compares equal to a fresh one)."""
    import json

    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ("device", "log_every")}))


class Trainer:
    """One SAE's optimisation state (AdamW, schedule, dead-latent clocks); :meth:`step` trains on one batch.

    :func:`train_sae` drives one, :func:`sae_vit.multi.train_many` several from one pass over a cache. Under
    ``torchrun`` the loss runs inside DistributedDataParallel: gradients and fired latents are all-reduced, so
    every rank holds the same SAE; ``tokens`` count the tokens of all ranks.
    """

    def __init__(self, sae: SAE, cfg: TrainConfig, world: int = 1, workspace: kernels.Workspace | None = None):
        self.cfg = cfg  # resolved
        self.device = torch.device(cfg.device)
        self.sae = sae.to(self.device).train()
        self.world = world
        self.n_steps = math.ceil(cfg.n_tokens / cfg.batch_size)
        loss_fn = _Loss(sae, cfg, workspace)
        # Fused AdamW: one pass over parameters and moments instead of a dozen (it matters at d_sae x d_in).
        fused = self.device.type in ("cpu", "cuda")
        params = [p for p in loss_fn.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=ADAM_BETAS, weight_decay=cfg.weight_decay,
                                     fused=fused)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, self.n_steps, cfg))
        self.since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=self.device)
        self.step_count = self.tokens = 0
        self.loss_fn: torch.nn.Module = loss_fn
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_fn = DistributedDataParallel(self.loss_fn, device_ids=ids, broadcast_buffers=False)

    @property
    def done(self) -> bool:
        return self.tokens >= self.cfg.n_tokens

    def step(self, x: Tensor) -> StepOutput:
        """One optimisation step on this rank's batch ``x`` [n, d_in] (any float dtype, any device)."""
        cfg = self.cfg
        x = x.to(device=self.device, dtype=torch.float32, non_blocking=True)
        dead = self.since_fired >= cfg.dead_tokens
        l1_weight = cfg.l1_coefficient * min(1.0, (self.step_count + 1) / max(1, cfg.l1_warmup_steps))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
            out = self.loss_fn(x, dead, l1_weight)
        optimizer_step(self.sae, self.opt, out.loss, cfg.grad_clip)
        self.sched.step()
        fired, n = out.fired, x.shape[0]
        if self.world > 1:
            import torch.distributed as dist

            counts = torch.cat([fired.to(torch.long), torch.tensor([n], device=self.device)])
            dist.all_reduce(counts)
            fired, n = counts[:-1] > 0, int(counts[-1])
        self.since_fired += n
        self.since_fired[fired] = 0
        self.step_count, self.tokens = self.step_count + 1, self.tokens + n
        return out

    def state(self, out: StepOutput) -> TrainState:
        """What the progress callback sees after the step that returned ``out``."""
        dead_frac = (self.since_fired >= self.cfg.dead_tokens).float().mean().item()
        return TrainState(self.step_count, self.n_steps, self.tokens, out.loss.item(), out.l0.item(),
                          out.fvu.item(), dead_frac)

    def finish(self, eval_acts: Tensor | None = None) -> SAE:
        """Put the SAE in eval mode and record the recipe, the training summary and held-out metrics."""
        sae, cfg = self.sae.eval(), self.cfg
        with torch.no_grad():  # storage of their own, in the layout the rest of the code knows
            sae.W_enc.data, sae.b_enc.data = sae.W_enc.data.contiguous(), sae.b_enc.data.contiguous()
        sae.W_enc.requires_grad_(True)
        sae.b_enc.requires_grad_(True)
        summary = {"tokens_seen": self.tokens, "steps": self.step_count, "recipe": recipe(cfg),
                   "train_dead_fraction": (self.since_fired >= cfg.dead_tokens).float().mean().item()}
        if self.world > 1:
            summary["world_size"] = self.world
        if eval_acts is not None:
            summary.update(evaluate(sae, eval_acts, batch_size=cfg.batch_size))
            summary["eval_tokens"] = summary.pop("n_tokens")
        sae.cfg.training = summary
        return sae


def prepare(
    batches: Iterable[Tensor], d_in: int, cfg: TrainConfig, *, init_acts: Tensor | None = None,
    sae_config_extra: dict | None = None, sae: SAE | None = None,
) -> tuple[Trainer, Iterator[Tensor], int]:
    """Resolve ``cfg``, build (or check) the SAE and its :class:`Trainer`; return it, this rank's batch stream
    (re-chunked to ``batch_size / world`` tokens) and the rank."""
    rank, world = distributed()
    cfg = resolve(cfg, d_in)
    stream = rebatch(batches, max(1, cfg.batch_size // world), d_in)
    if sae is None:
        if init_acts is None:
            first = next(stream, None)
            if first is None:
                raise SaeVitError("No training activations were given; check the activation cache.")
            init_acts, stream = first, itertools.chain([first], stream)
        sae = init_sae(d_in, cfg, init_acts, sae_config_extra)
    elif sae.cfg.d_in != d_in or sae.cfg.architecture != cfg.architecture:
        raise SaeVitError(
            f"The SAE to fine-tune is a {sae.cfg.architecture} SAE with d_in={sae.cfg.d_in}, but training asks for "
            f"{cfg.architecture} on d_in={d_in}; pass a matching --architecture or SAE."
        )
    return Trainer(sae, cfg, world), rank_slice(stream, rank, world), rank


def train_sae(
    batches: Iterable[Tensor],
    d_in: int,
    cfg: TrainConfig,
    *,
    eval_acts: Tensor | None = None,
    init_acts: Tensor | None = None,
    sae_config_extra: dict | None = None,
    progress: Callable[[TrainState], None] | None = None,
    sae: SAE | None = None,
) -> SAE:
    """Train an SAE on ``batches`` (an iterable of [n, d_in] activation tensors) and return it in eval mode.

    ``init_acts`` [m, d_in] sets ``b_dec`` and the constant scale (default: the first batch).
    ``eval_acts`` [e, d_in] are held-out tokens; their metrics (:func:`sae_vit.metrics.evaluate`) and the
    recipe land in ``sae.cfg.training``. ``sae_config_extra`` (model, layer, site, tokens) is recorded in the
    checkpoint config. ``sae`` continues training an existing SAE (fine-tuning) instead of a fresh one.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank must be given the same ``batches``: each trains on a
    disjoint slice (``batch_size / world`` tokens per rank and step, so a step still sees ``batch_size``
    tokens) with DistributedDataParallel, and only rank 0 evaluates (``progress`` is called on rank 0 only).
    """
    trainer, stream, rank = prepare(batches, d_in, cfg, init_acts=init_acts, sae_config_extra=sae_config_extra,
                                    sae=sae)
    for x in stream:
        if trainer.done:
            break
        out = trainer.step(x[: math.ceil((trainer.cfg.n_tokens - trainer.tokens) / trainer.world)])
        if progress is not None and rank == 0 and (
                trainer.step_count % trainer.cfg.log_every == 0 or trainer.step_count == trainer.n_steps):
            progress(trainer.state(out))
    return trainer.finish(eval_acts if rank == 0 else None)
