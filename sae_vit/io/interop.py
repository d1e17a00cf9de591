"""Read SAEs saved by other libraries (SAELens, EleutherAI sparsify, ViT-Prisma) and write ours in SAELens's layout.

Every reader returns an :class:`~sae_vit.sae.SAE` that computes the same reconstruction as the original
library's forward pass; the conversions (names, transposes, folded biases and scales) are documented in
docs/interop.md. Only safetensors, JSON and ``torch.load(..., weights_only=True)`` are used, so a
downloaded file can never run code.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from sae_vit import __version__
from sae_vit.core.atomic import atomic_folder, atomic_write, write_json
from sae_vit.core.defaults import REAL_CLIP
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import (
    FORMAT_VERSION,
    METADATA_KEY,
    SAE,
    SAEConfig,
    check_weights,
    is_checkpoint,
    weight_shapes,
)

FORMATS = ("sae_vit", "saelens", "sparsify", "prisma")
EXPORT_FORMATS = ("saelens",)

#: Hub ids and other spellings of the paper's base model, mapped to its timm name.
_REAL_CLIP_ALIASES = ("CLIP-ViT-B-32-DataComp.XL-s13B-b90K", REAL_CLIP)

# Hook names of TransformerLens-style libraries (SAELens, Prisma) <-> our sites.
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_mlp_out|mlp\.hook_post)$")
_SITE_TO_HOOK = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "mlp_hidden": "mlp.hook_post"}
_HOOK_TO_SITE = {v: k for k, v in _SITE_TO_HOOK.items()}


# -- shared helpers --------------------------------------------------------------------------------
def model_from_foreign(name: str | None) -> str:
    """Our model name for a foreign ``model_name`` (the DataComp CLIP B/32 in any spelling -> its timm name)."""
    if not name:
        return ""
    if any(alias in name for alias in _REAL_CLIP_ALIASES):
        return REAL_CLIP
    return name


def site_from_hook(layer: int | None, subtype: str, where: str) -> tuple[int, str]:
    """(layer, site) for a TransformerLens hook ``blocks.{layer}.{subtype}``; ``hook_resid_pre`` of block L is
    the ``resid_post`` of block L-1."""
    if layer is None:
        raise SaeVitError(f"{where} names no hook layer; pass --layer to `saevit convert`.")
    if subtype == "hook_resid_pre":
        if layer == 0:
            raise SaeVitError(f"{where} hooks blocks.0.hook_resid_pre (the embeddings), which sae-vit does not hook.")
        return layer - 1, "resid_post"
    if subtype not in _HOOK_TO_SITE:
        raise SaeVitError(
            f"{where} hooks {subtype!r}, which has no sae-vit site; sae-vit reads hook_resid_post, hook_mlp_out "
            "and mlp.hook_post SAEs."
        )
    return layer, _HOOK_TO_SITE[subtype]


def hook_name(layer: int | None, site: str) -> str:
    """The TransformerLens hook name of our (layer, site)."""
    return f"blocks.{layer if layer is not None else 0}.{_SITE_TO_HOOK.get(site, 'hook_' + site)}"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SaeVitError(f"{path} is not a readable JSON file ({exc}); re-download it.") from exc
    if not isinstance(data, dict):
        raise SaeVitError(f"{path} does not hold a JSON object; re-download it.")
    return data


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SaeVitError(f"{path} is not a readable .safetensors file ({exc}); re-download it.") from exc


def read_torch_tensors(path: Path) -> dict[str, Tensor]:
    """Tensors of a PyTorch ``.pt`` state dict, read with ``weights_only=True``: no pickled code ever runs."""
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SaeVitError(
            f"Refusing to load {path}: it pickles Python objects other than tensors, and sae-vit never unpickles "
            "code; ask its authors for a plain state dict (or a .safetensors file)."
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise SaeVitError(f"{path} is not a readable PyTorch tensor file ({exc}); re-download it.") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise SaeVitError(f"{path} does not hold a state dict of tensors; re-download it.")
    return {k: v.float() for k, v in obj.items()}


def _need(tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], where: Path) -> None:
    for name, shape in shapes.items():
        if name not in tensors:
            raise SaeVitError(f"{where} lacks tensor {name!r} (has {', '.join(sorted(tensors))}); it is not a "
                              "complete SAE.")
        if tuple(tensors[name].shape) != shape:
            raise SaeVitError(f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                              "from its config; the files do not match.")


def _build(cfg: SAEConfig, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor) -> SAE:
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    cfg.validate()
    check_weights("the SAE to import", cfg, tensors)
    return SAE.from_tensors(cfg, tensors)


def _int(value, what: str, where: Path) -> int:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SaeVitError(f"{where}: {what} is {value!r}, expected an integer.") from exc


# -- format detection ------------------------------------------------------------------------------
def _prisma_weights(folder: Path) -> Path | None:
    candidates = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    candidates += [p for p in sorted(folder.glob("*.safetensors")) if not is_checkpoint(p)]
    return candidates[0] if candidates else None


def detect_format(src: str | os.PathLike) -> str:
    """Which library wrote ``src`` (a file or a folder): ``sae_vit``, ``saelens``, ``sparsify`` or ``prisma``."""
    src = Path(src)
    if src.is_file():
        if src.suffix == ".safetensors" and is_checkpoint(src):
            return "sae_vit"
        if src.suffix in (".pt", ".pth") and (src.parent / "config.json").is_file():
            return "prisma"
        src = src.parent
    if not src.is_dir():
        raise SaeVitError(f"{src} does not exist; check the path.")
    if is_checkpoint(src / "sae.safetensors"):
        return "sae_vit"
    if (src / "cfg.json").is_file() and (src / "sae_weights.safetensors").is_file():
        return "saelens"
    if (src / "cfg.json").is_file() and (src / "sae.safetensors").is_file():
        return "sparsify"
    if (src / "config.json").is_file() and _prisma_weights(src) is not None:
        return "prisma"
    raise SaeVitError(
        f"{src} is not an SAE folder sae-vit can read: expected sae.safetensors (sae-vit or sparsify, with "
        "cfg.json), cfg.json + sae_weights.safetensors (SAELens) or config.json + a .pt file (ViT-Prisma)."
    )


# -- SAELens ---------------------------------------------------------------------------------------
def _seqpos_to_tokens(seqpos) -> str:
    """SAELens ``seqpos_slice`` -> our token selection (CLS is position 0)."""
    seqpos = list(seqpos or [])
    seqpos += [None] * (2 - len(seqpos))
    start, stop = seqpos[0], seqpos[1]
    if start in (0, None) and stop == 1:
        return "cls"
    if start == 1 and stop is None:
        return "patches"
    return "all"


_TOKENS_TO_SEQPOS = {"cls": [0, 1], "patches": [1, None], "all": [None]}


def from_saelens(folder: str | os.PathLike) -> SAE:
    """An SAE saved by SAELens (``cfg.json`` + ``sae_weights.safetensors``, flat pre-6.0 or 6.x ``metadata`` config)."""
    folder = Path(folder)
    cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    raw = _read_json(cfg_path)
    meta = {**raw, **(raw.get("metadata") or {})}
    tensors = _read_safetensors(weights_path)
    d_in, d_sae = _int(raw.get("d_in"), "d_in", cfg_path), _int(raw.get("d_sae"), "d_sae", cfg_path)

    arch = raw.get("architecture") or "standard"
    act = raw.get("activation_fn_str") or raw.get("activation_fn") or ("topk" if arch == "topk" else "relu")
    if arch in ("jumprelu", "gated", "batchtopk") or "threshold" in tensors or "b_gate" in tensors:
        raise SaeVitError(f"{folder} is a SAELens {arch} SAE; sae-vit reads standard (ReLU) and TopK SAEs only.")
    if arch not in ("standard", "topk") or act not in ("relu", "topk"):
        raise SaeVitError(f"{folder}: SAELens architecture {arch!r} with activation {act!r} is not supported; "
                          "sae-vit reads standard (ReLU) and TopK SAEs.")
    if raw.get("rescale_acts_by_decoder_norm"):
        raise SaeVitError(f"{folder} was saved with rescale_acts_by_decoder_norm=true, which sae-vit cannot "
                          "represent; re-save it from SAELens with the decoder norms folded in.")
    k = None
    if arch == "topk" or act == "topk":
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        k = _int(k, "k", cfg_path)
    norm = raw.get("normalize_activations") or "none"
    # SAELens applies no input transform at inference for 'expected_average_only_in' (the scale is the user's).
    norm = {"none": "none", "expected_average_only_in": "none", "layer_norm": "layer_norm"}.get(norm, norm)
    if norm not in ("none", "layer_norm"):
        raise SaeVitError(f"{folder}: SAELens normalize_activations={norm!r} (a per-token rescale) has no sae-vit "
                          "equivalent; sae-vit reads 'none', 'expected_average_only_in' and 'layer_norm'.")

    _need(tensors, weight_shapes(d_in, d_sae), weights_path)
    W_enc, b_enc, W_dec, b_dec = tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"]
    if not raw.get("apply_b_dec_to_input", True):
        # SAELens encodes n(x) @ W_enc + b_enc; ours subtracts b_dec first, so fold b_dec @ W_enc into b_enc.
        b_enc = b_enc + b_dec @ W_enc
    if raw.get("finetuning_scaling_factor") and "scaling_factor" in tensors:
        # SAELens multiplies the latents by scaling_factor before decoding: fold it into the decoder rows.
        W_dec = W_dec * tensors["scaling_factor"][:, None]

    ours = raw.get("sae_vit")
    if isinstance(ours, dict) and _matches(ours, d_in, d_sae, "topk" if k else "relu", k, norm):
        cfg = _config_from_meta(ours, cfg_path)
    else:
        hook = meta.get("hook_name") or ""
        m = _HOOK_RE.match(hook)
        if m:
            layer, site = site_from_hook(int(m.group(1)), m.group(2), f"{folder} (hook {hook})")
        elif meta.get("hook_layer") is not None:
            raise SaeVitError(f"{folder} hooks {hook!r}, which has no sae-vit site; sae-vit reads "
                              "blocks.L.hook_resid_post, hook_mlp_out and mlp.hook_post SAEs.")
        else:
            layer, site = None, "resid_post"
        cfg = SAEConfig(
            d_in=d_in, d_sae=d_sae, architecture="topk" if k else "relu", k=k,
            l1_coefficient=None if k else raw.get("l1_coefficient"), normalization=norm,
            model=model_from_foreign(meta.get("model_name")), layer=layer, site=site,
            tokens=_seqpos_to_tokens(meta.get("seqpos_slice")),
            training={"imported_from": {"format": "saelens", "hook_name": hook,
                                        "model_name": meta.get("model_name"),
                                        "sae_lens_version": meta.get("sae_lens_version")
                                        or meta.get("sae_lens_training_version")}},
        )
    return _build(cfg, W_enc, b_enc, W_dec, b_dec)


def _matches(meta: dict, d_in: int, d_sae: int, arch: str, k, norm: str) -> bool:
    """Whether our metadata stashed in a foreign config still describes the tensors beside it."""
    return (meta.get("d_in"), meta.get("d_sae"), meta.get("architecture"), meta.get("normalization")) == (
        d_in, d_sae, arch, norm) and (arch != "topk" or meta.get("k") == k)


def _config_from_meta(meta: dict, where: Path) -> SAEConfig:
    from dataclasses import fields

    known = {f.name for f in fields(SAEConfig)}
    try:
        return SAEConfig(**{k: v for k, v in meta.items() if k in known})
    except TypeError as exc:
        raise SaeVitError(f"{where} has incomplete sae-vit metadata ({exc}); re-export it.") from exc


#: The files an export writes; ``--overwrite`` replaces a folder holding only these, never one holding more.
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")


def _check_export_target(folder: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, or a folder holding anything but a previous export's own files; a previous
    export is replaced only with ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise SaeVitError(f"{folder} is a file, not a folder; choose another --to.")
    if not folder.exists():
        return
    foreign = sorted(p for p in folder.iterdir() if p.name not in SAELENS_FILES or not p.is_file())
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise SaeVitError(f"{folder} holds {foreign[0]}{more}, which an export did not write; choose another --to "
                          "(--overwrite only ever replaces a previous export's own files).")
    if any(folder.iterdir()) and not overwrite:
        raise SaeVitError(f"{folder} already exists; pass --overwrite to replace it or choose another --to.")


def to_saelens(sae: SAE, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``sae`` in SAELens's layout: ``folder/cfg.json`` + ``folder/sae_weights.safetensors``.

    The config is SAELens 6.x shaped (``metadata`` block) with the pre-6.0 flat keys beside it, and our own
    metadata under ``sae_vit`` so that importing it back restores every field exactly.
    """
    from safetensors.torch import save_file

    _check_export_target(Path(folder), overwrite)
    cfg = sae.cfg
    W_enc, b_enc = sae.W_enc.detach().float().cpu(), sae.b_enc.detach().float().cpu()
    W_dec, b_dec = sae.W_dec.detach().float().cpu(), sae.b_dec.detach().float().cpu()
    norm = cfg.normalization
    if norm == "constant":
        # n(x) = s*x is linear: fold it into the weights (SAELens has no constant scalar normalisation).
        s = float(sae.scale)
        W_enc, W_dec, b_dec, norm = W_enc * s, W_dec / s, b_dec / s, "none"
    hook = hook_name(cfg.layer, cfg.site)
    metadata = {
        "model_name": cfg.model, "hook_name": hook, "hook_head_index": None,
        "seqpos_slice": _TOKENS_TO_SEQPOS[cfg.tokens] if cfg.tokens in _TOKENS_TO_SEQPOS else [None],
        "prepend_bos": False, "model_class_name": "HookedViT", "sae_lens_training_version": None,
    }
    saelens_cfg = {
        "architecture": cfg.architecture.replace("relu", "standard"),
        "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": norm, "reshape_activations": "none",
        **({"k": cfg.k} if cfg.architecture == "topk" else {}),
        "metadata": metadata,
        # pre-6.0 SAELens readers take these flat keys
        "model_name": cfg.model, "hook_name": hook, "hook_layer": cfg.layer, "hook_head_index": None,
        "activation_fn_str": cfg.architecture, "activation_fn_kwargs": {"k": cfg.k} if cfg.architecture == "topk"
        else {}, "finetuning_scaling_factor": False, "context_size": None, "dataset_path": None,
        "dataset_trust_remote_code": False, "model_from_pretrained_kwargs": {}, "prepend_bos": False,
        "seqpos_slice": metadata["seqpos_slice"],
        **({"l1_coefficient": cfg.l1_coefficient} if cfg.l1_coefficient is not None else {}),
        METADATA_KEY: {"format_version": FORMAT_VERSION, "package_version": __version__, **asdict(cfg)},
    }
    tensors = {"W_enc": W_enc.contiguous(), "b_enc": b_enc.contiguous(), "W_dec": W_dec.contiguous(),
               "b_dec": b_dec.contiguous()}

    def write(tmp: Path) -> None:
        atomic_write(tmp / "sae_weights.safetensors", lambda f: save_file(tensors, str(f)))
        write_json(tmp / "cfg.json", saelens_cfg)

    return atomic_folder(folder, write)


# -- sparsify --------------------------------------------------------------------------------------
_SPARSIFY_HOOK_RE = re.compile(r"(?:^|\.)(?:blocks|layers|h|layer)\.(\d+)(\.mlp)?$")


def from_sparsify(folder: str | os.PathLike) -> SAE:
    """An SAE saved by EleutherAI sparsify (``cfg.json`` with ``d_in`` + ``sae.safetensors``)."""
    folder = Path(folder)
    cfg_path, weights_path = folder / "cfg.json", folder / "sae.safetensors"
    raw = _read_json(cfg_path)
    tensors = _read_safetensors(weights_path)
    d_in = _int(raw.get("d_in"), "d_in", cfg_path)
    d_sae = int(raw.get("num_latents") or 0) or d_in * _int(raw.get("expansion_factor"), "expansion_factor", cfg_path)
    k = _int(raw.get("k"), "k", cfg_path)
    if raw.get("activation", "topk") != "topk":
        raise SaeVitError(f"{folder} uses sparsify activation {raw.get('activation')!r}; sae-vit reads TopK only.")
    if raw.get("transcode") or raw.get("skip_connection") or "W_skip" in tensors:
        raise SaeVitError(f"{folder} is a sparsify transcoder / skip-connection coder, not an autoencoder; "
                          "sae-vit reads plain TopK SAEs.")
    _need(tensors, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in),
                    "b_dec": (d_in,)}, weights_path)
    m = _SPARSIFY_HOOK_RE.search(folder.name)
    layer, site = (int(m.group(1)), "mlp_out" if m.group(2) else "resid_post") if m else (None, "resid_post")
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, normalization="none", layer=layer, site=site,
                    training={"imported_from": {"format": "sparsify", "hookpoint": folder.name}})
    # sparsify: encoder = nn.Linear(d_in, d_sae), so its weight is W_enc transposed; it subtracts b_dec first.
    return _build(cfg, tensors["encoder.weight"].T, tensors["encoder.bias"], tensors["W_dec"], tensors["b_dec"])


# -- ViT-Prisma ------------------------------------------------------------------------------------
def from_prisma(src: str | os.PathLike) -> SAE:
    """An SAE released by ViT-Prisma (``config.json`` + a ``.pt`` state dict, e.g. ``n_images_2600058.pt``).

    ``src`` is the folder or the weights file. The weights are read with ``torch.load(weights_only=True)``.
    """
    src = Path(src)
    folder, weights = (src.parent, src) if src.is_file() else (src, _prisma_weights(src))
    cfg_path = folder / "config.json"
    if weights is None or not cfg_path.is_file():
        raise SaeVitError(f"{folder} is not a ViT-Prisma SAE folder (config.json + a .pt weights file).")
    raw = _read_json(cfg_path)
    tensors = _read_safetensors(weights) if weights.suffix == ".safetensors" else read_torch_tensors(weights)

    arch = raw.get("architecture", "standard")
    if arch != "standard" or "b_gate" in tensors:
        raise SaeVitError(f"{folder} is a ViT-Prisma {arch} SAE; sae-vit reads standard (ReLU / TopK) SAEs only.")
    if raw.get("is_transcoder"):
        raise SaeVitError(f"{folder} is a ViT-Prisma transcoder, not an autoencoder; sae-vit cannot load it.")
    d_in = _int(raw.get("d_in"), "d_in", cfg_path)
    d_sae = raw.get("d_sae") or d_in * _int(raw.get("expansion_factor"), "expansion_factor", cfg_path)
    d_sae = _int(d_sae, "d_sae", cfg_path)
    act = raw.get("activation_fn_str", "relu")
    if act == "topk":
        k = _int((raw.get("activation_fn_kwargs") or {}).get("k"), "activation_fn_kwargs.k", cfg_path)
    elif act == "relu":
        k = None
    else:
        raise SaeVitError(f"{folder}: ViT-Prisma activation {act!r} is not supported; sae-vit reads relu and topk.")
    # Prisma's RunnerConfig defaults normalize_activations to 'layer_norm' when the key is absent.
    norm = raw.get("normalize_activations", "layer_norm") or "none"
    if norm not in ("none", "layer_norm"):
        raise SaeVitError(f"{folder}: ViT-Prisma normalize_activations={norm!r} has no sae-vit equivalent; "
                          "sae-vit reads 'none' and 'layer_norm'.")
    layer, site = site_from_hook(
        _int(raw.get("hook_point_layer"), "hook_point_layer", cfg_path) if "hook_point_layer" in raw else None,
        raw.get("layer_subtype", "hook_resid_post"), str(folder))
    tokens = "cls" if raw.get("cls_token_only") else "patches" if raw.get("use_patches_only") else "all"
    _need(tensors, weight_shapes(d_in, d_sae), weights)
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture="topk" if k else "relu", k=k,
        l1_coefficient=None if k else raw.get("l1_coefficient"), normalization=norm,
        model=model_from_foreign(raw.get("model_name")), layer=layer, site=site, tokens=tokens,
        training={"imported_from": {"format": "prisma", "weights": weights.name, "model_name": raw.get("model_name"),
                                    "hook_point": f"blocks.{raw.get('hook_point_layer')}.{raw.get('layer_subtype')}"}},
    )
    # Prisma: f = act((ln(x) - b_dec) @ W_enc + b_enc), x_hat = (f @ W_dec + b_dec) * std + mu: our formula as is.
    return _build(cfg, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"])


# -- entry points ----------------------------------------------------------------------------------
_READERS = {"saelens": from_saelens, "sparsify": from_sparsify, "prisma": from_prisma}


def load_any(src: str | os.PathLike, fmt: str = "auto") -> SAE:
    """Load an SAE in any supported format (``auto`` detects it) as our :class:`SAE`."""
    if fmt not in ("auto", *FORMATS):
        raise SaeVitError(f"Unknown format {fmt!r}; use auto, {', '.join(FORMATS)}.")
    src = Path(src)
    if fmt == "auto":
        fmt = detect_format(src)
    if fmt == "sae_vit":
        return SAE.load(src)
    if src.is_file() and fmt != "prisma":
        src = src.parent
    return _READERS[fmt](src)


def convert(src: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", overwrite: bool = False,
            **overrides) -> Path:
    """Convert a foreign SAE to our checkpoint ``out`` (a file, or a folder that gets ``sae.safetensors``).

    ``overrides`` (``layer``, ``site``, ``tokens``, ``model``) fill in what the foreign format does not record.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / "sae.safetensors"
    if out.exists() and not overwrite:
        raise SaeVitError(f"{out} already exists; pass --overwrite to replace it or choose another --to.")
    allowed = {"site": tuple(_SITE_TO_HOOK), "tokens": tuple(_TOKENS_TO_SEQPOS)}
    for name, value in overrides.items():
        if value is not None and name in allowed and value not in allowed[name]:
            raise SaeVitError(f"Unknown {name} {value!r}; use one of {', '.join(allowed[name])}.")
    sae = load_any(src, fmt)
    for name, value in overrides.items():
        if value is not None:
            setattr(sae.cfg, name, value)
    sae.cfg.validate()
    return sae.save(out, overwrite=overwrite)


def export(sae_path: str | os.PathLike, out: str | os.PathLike, fmt: str = "saelens", overwrite: bool = False) -> Path:
    """Write one of our checkpoints in another library's layout (``saelens``). ``sae_path`` is a local checkpoint,
    or any reference :func:`sae_vit.io.resolve.resolve_sae_path` knows (``hf://``, a released name) once that
    module is imported (``import sae_vit`` and every command import it)."""
    if fmt not in EXPORT_FORMATS:
        raise SaeVitError(f"Cannot export to {fmt!r}; supported: {', '.join(EXPORT_FORMATS)}.")
    return to_saelens(SAE.load(sae_path), out, overwrite)


__all__ = ["FORMATS", "convert", "detect_format", "export", "from_prisma", "from_saelens", "from_sparsify",
           "load_any", "model_from_foreign", "read_torch_tensors", "to_saelens"]
