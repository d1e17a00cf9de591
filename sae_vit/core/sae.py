"""SAE modules (TopK, ReLU+L1) and the one checkpoint format.

A checkpoint is one ``.safetensors`` file: tensors ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae],
``W_dec`` [d_sae, d_in], ``b_dec`` [d_in] (plus ``scale`` [] for constant-scale normalisation), and one
JSON string under the metadata key ``sae_vit`` (see :class:`SAEConfig` and docs/formats.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sae_vit import __version__
from sae_vit.core.atomic import atomic_write
from sae_vit.core.errors import SaeVitError

FORMAT_VERSION = 1
METADATA_KEY = "sae_vit"
ARCHITECTURES = ("topk", "relu")
NORMALIZATIONS = ("none", "layer_norm", "constant")
#: The hook sites and token selections a checkpoint may name (the same as :mod:`sae_vit.core.backbone`'s, written
#: out here so that loading an SAE does not import the backbone).
SITES = ("resid_post", "mlp_out", "mlp_hidden")
TOKENS = ("cls", "patches", "all")
#: The tensors of every checkpoint, in file order.
WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")
LN_EPS = 1e-5  # the paper's SAEs: x <- (x - mu) / (sigma + 1e-5)


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE and to know what it was trained on."""

    d_in: int
    """Width of the activations (d_model at the hook, or the MLP width for ``mlp_hidden``)."""
    d_sae: int
    """Number of latents (dictionary size)."""
    architecture: str = "topk"
    """``topk`` (L0 set directly by ``k``) or ``relu`` (ReLU with an L1 penalty)."""
    k: int | None = 32
    """Active latents per token for ``topk``; ``None`` for ``relu``."""
    l1_coefficient: float | None = None
    """L1 penalty weight for ``relu``; ``None`` for ``topk``."""
    normalization: str = "none"
    """Input normalisation: ``none``, ``layer_norm`` (per token, as the paper's SAEs) or ``constant``."""
    model: str = ""
    """Backbone name the SAE was trained on (e.g. ``toy`` or ``vit_base_patch32_clip_224.datacompxl``)."""
    layer: int | None = None
    """0-based block index of the hook."""
    site: str = "resid_post"
    """Hook site: ``resid_post``, ``mlp_out`` or ``mlp_hidden``."""
    tokens: str = "all"
    """Token selection the SAE was trained on: ``cls``, ``patches`` or ``all``."""
    training: dict = field(default_factory=dict)
    """Training summary: tokens seen, final held-out L0, FVU, MSE, dead fraction, the recipe."""

    def validate(self) -> None:
        """Raise :class:`SaeVitError` if a field has the wrong type or is out of range (:func:`config_problem`)."""
        problem = config_problem(self)
        if problem:
            raise SaeVitError(f"Invalid SAE config: {problem}.")


def _is_int(v) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    import math
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def config_problem(cfg: SAEConfig) -> str | None:
    """The one schema of an SAE's config (what :meth:`SAEConfig.validate` and every checkpoint load check): what is
    wrong with the first bad field, as a phrase, or None. Types are checked, not coerced: ``d_in`` 64.0 and ``k``
    true are refused, as is a ``tokens`` or ``site`` sae-vit does not know."""
    if not isinstance(cfg.architecture, str) or cfg.architecture not in ARCHITECTURES:
        return f"unknown SAE architecture {cfg.architecture!r}; use one of {', '.join(ARCHITECTURES)}"
    if not isinstance(cfg.normalization, str) or cfg.normalization not in NORMALIZATIONS:
        return f"unknown normalisation {cfg.normalization!r}; use one of {', '.join(NORMALIZATIONS)}"
    for name in ("d_in", "d_sae"):
        value = getattr(cfg, name)
        if not _is_int(value) or value <= 0:
            return f"{name} must be a positive integer (got {value!r})"
    if cfg.architecture == "topk" and not (_is_int(cfg.k) and 0 < cfg.k <= cfg.d_sae):
        return f"a TopK SAE needs an integer k with 0 < k <= d_sae (k={cfg.k!r}, d_sae={cfg.d_sae})"
    if cfg.architecture == "relu" and cfg.k is not None and not _is_int(cfg.k):
        return f"k must be an integer or null (got {cfg.k!r})"
    if cfg.l1_coefficient is not None and not (_is_finite(cfg.l1_coefficient) and cfg.l1_coefficient >= 0):
        return f"l1_coefficient must be a finite number >= 0 or null (got {cfg.l1_coefficient!r})"
    if not isinstance(cfg.model, str):
        return f"model must be a string (got {cfg.model!r})"
    if cfg.layer is not None and not (_is_int(cfg.layer) and cfg.layer >= 0):
        return f"layer must be a block index >= 0 or null (got {cfg.layer!r})"
    if not isinstance(cfg.site, str) or cfg.site not in SITES:
        return f"site must be one of {', '.join(SITES)} (got {cfg.site!r})"
    if not isinstance(cfg.tokens, str) or cfg.tokens not in TOKENS:
        return f"tokens must be one of {', '.join(TOKENS)} (got {cfg.tokens!r})"
    if not isinstance(cfg.training, dict):
        return f"training must be an object (got {type(cfg.training).__name__})"
    return None


class SAEOutput(NamedTuple):
    """What :meth:`SAE.forward` returns."""

    x_hat: Tensor
    """Reconstruction in the input's space (de-normalised), [..., d_in]."""
    latents: Tensor
    """Latent activations f, [..., d_sae] (dense; at most k non-zero per token for TopK)."""


class TokenNorm(NamedTuple):
    """Per-token statistics a ``layer_norm`` SAE normalised its input with; :meth:`SAE.decode` needs them to map
    a reconstruction back to the input's space (``x = x_n * sigma + mu``)."""

    mu: Tensor
    """Mean of each token over d_in, [..., 1]."""
    sigma: Tensor
    """Standard deviation (unbiased) of each token over d_in, [..., 1]."""


class SAE(nn.Module):
    """A sparse autoencoder ``x -> f = act(W_enc^T (n(x) - b_dec) + b_enc) -> x_hat = n^-1(W_dec^T f + b_dec)``.

    ``n`` is the input normalisation recorded in the config. Decoder rows are kept at unit norm by the trainer.

    Usage, for readers coming from SAELens or sparsify::

        sae = SAE.from_pretrained("clip-b32/resid_post/layer_8")   # or a file, a folder, hf://owner/repo/path
        f, norm = sae.encode(x, return_norm=True)   # latents [..., d_sae]; norm: per-token stats (layer_norm)
        x_hat = sae.decode(f, norm)                 # back in x's own space; equals sae(x).x_hat
        x_hat, f = sae(x)                           # SAEOutput(x_hat, latents)
        x_edit = sae.edit(x, lambda f: f.index_fill(-1, torch.tensor([12]), 0.0))   # error term kept

    ``x`` is [..., d_in] at the SAE's hook (``cfg.layer``, ``cfg.site``) for the tokens in ``cfg.tokens``.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        # Constant scale for ``normalization='constant'``: inputs are multiplied by it before encoding.
        self.register_buffer("scale", torch.tensor(1.0))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows; encoder initialised as the decoder's transpose."""
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # -- normalisation ---------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Map ``x`` [..., d_in] to the SAE's input space; returns the context needed to undo it."""
        norm = self.cfg.normalization
        if norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            sigma = x.std(dim=-1, keepdim=True)
            return (x - mu) / (sigma + LN_EPS), (mu, sigma)
        if norm == "constant":
            return x * self.scale, None
        return x, None

    def denormalize(self, x: Tensor, ctx: tuple[Tensor, Tensor] | TokenNorm | None) -> Tensor:
        """Inverse of :meth:`normalize` with the context it returned."""
        norm = self.cfg.normalization
        if norm == "layer_norm":
            # The paper's SAEs (ViT-Prisma, SAELens) de-normalise with sigma itself, not sigma + eps.
            mu, sigma = ctx
            return x * sigma + mu
        if norm == "constant":
            return x / self.scale
        return x

    # -- encode / decode in normalised space -------------------------------------------------------
    def pre_activations(self, xn: Tensor) -> Tensor:
        """Encoder pre-activations of normalised inputs, [..., d_sae]."""
        return (xn - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """The non-linearity: TopK of ReLU (k per token) or ReLU."""
        if self.cfg.architecture == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        return pre.relu()

    def decode_normalized(self, f: Tensor) -> Tensor:
        """Reconstruction in normalised space, [..., d_in]."""
        return f @ self.W_dec + self.b_dec

    # -- public API in the input's own space --------------------------------------------------------
    def encode(self, x: Tensor, return_norm: bool = False) -> Tensor | tuple[Tensor, TokenNorm | None]:
        """Latents f [..., d_sae] of activations ``x`` [..., d_in] (as SAELens's and sparsify's ``encode``).

        With ``return_norm``, returns ``(f, norm)``: ``norm`` is the :class:`TokenNorm` of each token for a
        ``layer_norm`` SAE (what :meth:`decode` needs to return to ``x``'s space) and ``None`` otherwise.
        """
        xn, ctx = self.normalize(x)
        f = self.activate(self.pre_activations(xn))
        if not return_norm:
            return f
        return f, TokenNorm(*ctx) if ctx is not None else None

    def decode(self, f: Tensor, norm: TokenNorm | None = None) -> Tensor:
        """Reconstruction [..., d_in] of latents ``f`` [..., d_sae] in the input's own space (normalisation undone).

        A ``layer_norm`` SAE normalises every token by its own mean and standard deviation, which the latents do
        not carry: pass the ``norm`` that ``encode(x, return_norm=True)`` returned for the same tokens, and
        ``decode(*sae.encode(x, return_norm=True))`` equals ``sae(x).x_hat``. ``constant`` and ``none`` SAEs need
        no ``norm``. For the normalised space itself, use :meth:`decode_normalized`.
        """
        if self.cfg.normalization == "layer_norm" and norm is None:
            raise SaeVitError("This SAE layer-normalises each token, so decode needs the tokens' statistics: "
                              "f, norm = sae.encode(x, return_norm=True); x_hat = sae.decode(f, norm) "
                              "(or sae.decode_normalized(f) for the normalised space).")
        return self.denormalize(self.decode_normalized(f), norm)

    def forward(self, x: Tensor) -> SAEOutput:
        """Encode and decode ``x`` [..., d_in]: ``sae(x)`` is ``SAEOutput(x_hat, latents)``, the reconstruction
        de-normalised into ``x``'s space and the latents f.

        Both at once, because steering and suppression need both. SAELens's ``sae(x)`` returns only the
        reconstruction (here ``sae(x).x_hat``); sparsify's returns a ``ForwardOutput`` with the reconstruction,
        the top-k values and indices and the training losses (here the latents are dense, at most k non-zero per
        token for TopK, and metrics live in :mod:`sae_vit.core.metrics`).
        """
        xn, ctx = self.normalize(x)
        f = self.activate(self.pre_activations(xn))
        return SAEOutput(self.denormalize(self.decode_normalized(f), ctx), f)

    def edit(self, x: Tensor, fn) -> Tensor:
        """Apply a latent edit ``fn(f) -> f'`` and return ``x + decode(f') - decode(f)``.

        Only the change is decoded, so the SAE's reconstruction error stays in the output and an edit that
        changes nothing returns ``x`` exactly. With ``layer_norm`` the change is de-normalised with the
        token's own (mu, sigma), as the paper's SAEs do.
        """
        xn, ctx = self.normalize(x)
        f = self.activate(self.pre_activations(xn))
        f_new = fn(f)
        delta = (f_new - f) @ self.W_dec
        if self.cfg.normalization == "layer_norm":
            delta = delta * ctx[1]
        elif self.cfg.normalization == "constant":
            delta = delta / self.scale
        return x + delta.to(x.dtype)

    @classmethod
    def from_pretrained(cls, ref: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
        """Load an SAE from any reference, in eval mode on ``device``:

        - a checkpoint file or a folder holding ``sae.safetensors`` (ours);
        - a SAELens, sparsify or ViT-Prisma folder (converted once, cached);
        - ``hf://owner/repo[/path][@revision]`` (through the Hugging Face cache; ``HF_HUB_OFFLINE=1`` works);
        - a released SAE's name, e.g. ``clip-b32/resid_post/layer_8`` (``sae_vit.list_released()``).

        One reference instead of SAELens's ``(release, sae_id)`` pair: a released name or an ``hf://`` path says
        both. Everything but a local sae-vit checkpoint goes through :func:`sae_vit.io.resolve.resolve_sae_path`,
        which ``from sae_vit import SAE`` installs (the core does not import the Hub or foreign formats).
        """
        if not REF_RESOLVER and not os.path.exists(ref):
            raise SaeVitError(
                f"{str(ref)!r} is not a local file, and no SAE resolver is installed for Hub URIs, foreign folders "
                "and released names; import the SAE as `from sae_vit import SAE` (or import sae_vit.io.resolve)."
            )
        return cls.load(ref, device)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Project decoder rows back to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    # -- checkpoint --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the checkpoint atomically (:func:`~sae_vit.core.atomic.atomic_write`); refuse to replace a file
        unless ``overwrite``."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not overwrite:
            raise SaeVitError(f"{path} already exists; pass --overwrite to replace it or choose another --out.")
        meta = {"format_version": FORMAT_VERSION, "package_version": __version__, **asdict(self.cfg)}
        tensors = {name: getattr(self, name).detach().float().contiguous().cpu() for name in WEIGHTS}
        if self.cfg.normalization == "constant":
            tensors["scale"] = self.scale.detach().float().reshape(()).cpu()
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
        """Load and validate a checkpoint: a file written by :meth:`save`, a folder holding one, or (through
        :func:`sae_vit.io.resolve.resolve_sae_path`) ``hf://owner/repo[/path][@revision]`` or a SAELens, sparsify or
        ViT-Prisma folder."""
        path = REF_RESOLVER[0](path) if REF_RESOLVER else local_checkpoint(path)
        return cls.from_tensors(*read_checkpoint(path)).to(device)

    @classmethod
    def from_tensors(cls, cfg: SAEConfig, tensors: dict[str, Tensor]) -> SAE:
        """An SAE (eval mode) with the weights in ``tensors`` (:data:`WEIGHTS`, and ``scale`` when present)."""
        sae = cls(cfg)
        with torch.no_grad():
            for name in WEIGHTS + (("scale",) if "scale" in tensors else ()):
                getattr(sae, name).copy_(tensors[name])
        return sae.eval()


#: Turns an SAE reference that is not a local sae-vit checkpoint (``hf://...``, a SAELens / sparsify / ViT-Prisma
#: folder) into one. :mod:`sae_vit.io.resolve` installs :func:`sae_vit.io.resolve.resolve_sae_path` here when it
#: is imported (``import sae_vit`` does, lazily; so does every command), so that :meth:`SAE.load` and every
#: command share one resolver while the core stays free of Hub and foreign-format code.
REF_RESOLVER: list = []


def local_checkpoint(path: str | os.PathLike) -> Path:
    """A local sae-vit checkpoint: a file, or a folder holding ``sae.safetensors``."""
    p = Path(path)
    if p.is_dir() and (p / "sae.safetensors").is_file():
        p = p / "sae.safetensors"
    if not p.is_file():
        raise SaeVitError(f"SAE checkpoint {p} does not exist; check the path or train one with `saevit train`.")
    return p


def weight_shapes(d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of :data:`WEIGHTS` for an SAE of these sizes."""
    return {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}


def is_checkpoint(path: str | os.PathLike, key: str = METADATA_KEY) -> bool:
    """Whether ``path`` is a safetensors file whose metadata holds ``key`` (by default: an sae-vit checkpoint).
    Never raises: an unreadable file is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return key in (fh.metadata() or {})
    except Exception:  # noqa: BLE001 - whatever is wrong with the file, it is not a checkpoint
        return False


def read_checkpoint(path: str | os.PathLike) -> tuple[SAEConfig, dict[str, Tensor]]:
    """Read and validate a checkpoint file; every failure is a one-line :class:`SaeVitError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SaeVitError(f"{path} is not a readable .safetensors file ({exc}); re-download or re-train it.") from exc
    if METADATA_KEY not in metadata:
        raise SaeVitError(f"{path} is a safetensors file but not an sae-vit checkpoint (no '{METADATA_KEY}' "
                          "metadata); convert it with the import tools or train one with `saevit train`.")
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise SaeVitError(f"{path} has corrupted sae-vit metadata; re-download or re-train it.") from exc
    if not isinstance(meta, dict):
        raise SaeVitError(f"{path} has sae-vit metadata that is a {type(meta).__name__}, not an object; re-download "
                          "or re-train it.")
    version = meta.pop("format_version", None)
    meta.pop("package_version", None)
    if version != FORMAT_VERSION:
        raise SaeVitError(f"{path} uses checkpoint format version {version}, this sae-vit reads version "
                          f"{FORMAT_VERSION}; upgrade sae-vit.")
    known = {f.name for f in fields(SAEConfig)}
    missing = sorted({"d_in", "d_sae"} - set(meta))
    if missing:
        raise SaeVitError(f"{path} has incomplete sae-vit metadata (no {', '.join(missing)}); re-train it.")
    cfg = SAEConfig(**{k: v for k, v in meta.items() if k in known})
    problem = config_problem(cfg)
    if problem:
        raise SaeVitError(f"{path} has invalid sae-vit metadata: {problem}; re-download or re-train it.")
    check_weights(path, cfg, tensors)
    return cfg, tensors


def check_weights(where, cfg: SAEConfig, tensors: dict[str, Tensor]) -> None:
    """Refuse weights that are missing, of the wrong shape or not a float type, or that hold NaN or infinity
    (naming the tensor)."""
    expected = weight_shapes(cfg.d_in, cfg.d_sae)
    if "scale" in tensors:
        expected["scale"] = ()
    for name, shape in expected.items():
        if name not in tensors:
            raise SaeVitError(f"{where} lacks tensor {name!r}; the checkpoint is incomplete, re-train it.")
        t = tensors[name]
        if tuple(t.shape) != shape and not (name == "scale" and t.numel() == 1):
            raise SaeVitError(f"{where}: tensor {name} has shape {tuple(t.shape)}, expected "
                              f"{shape} for d_in={cfg.d_in}, d_sae={cfg.d_sae}; the file is corrupted.")
        if not t.is_floating_point():
            raise SaeVitError(f"{where}: tensor {name} is {str(t.dtype).removeprefix('torch.')}, not a float type; "
                              "the file is corrupted.")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise SaeVitError(f"{where}: tensor {name} holds {bad} NaN or infinite value(s); the SAE is broken, "
                              "re-train it (e.g. with a lower --lr).")
