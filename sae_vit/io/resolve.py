"""The one SAE resolver: any SAE reference a user can give, as a local sae-vit checkpoint.

A reference is a checkpoint file, a folder holding ``sae.safetensors``, a SAELens / sparsify / ViT-Prisma folder
(converted once into the converted-SAE cache), ``hf://owner/repo[/path][@revision]`` (through the Hub cache), or
the name of a released SAE such as ``clip-b32/resid_post/layer_8`` (:mod:`sae_vit.io.released`; its ``hf://`` URI;
a local path spelled the same wins).
:meth:`sae_vit.core.sae.SAE.load`, :func:`load_sae` and every command take references through here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sae_vit.core import sae as _sae
from sae_vit.core.defaults import default_sae_dir
from sae_vit.core.errors import SaeVitError
from sae_vit.io import hub as _hub  # noqa: F401 - installs the guard around timm's Hub weight downloads


def _is_hf(ref: str | os.PathLike) -> bool:
    return str(ref).startswith("hf://")


def _converted_local(src: Path, fmt: str) -> Path:
    """Our checkpoint for a local foreign SAE (a folder, or a ViT-Prisma weights file), converted once into the
    converted-SAE cache (keyed by its path and its files' sizes and mtimes)."""
    from sae_vit.io.hub import converted_dir
    from sae_vit.io.interop import load_any

    src = src.resolve()
    files = sorted(f for f in src.iterdir() if f.is_file()) if src.is_dir() else [src]
    stamp = "".join(f"{f.name}:{f.stat().st_mtime_ns}:{f.stat().st_size};" for f in files)
    key = hashlib.sha256(f"{src}|{stamp}".encode()).hexdigest()[:16]
    target = converted_dir() / "local" / f"{src.name}-{key}" / "sae.safetensors"
    if target.is_file():
        return target
    sae = load_any(src, fmt)
    sae.cfg.training = {**sae.cfg.training, "source": str(src)}
    return sae.save(target, overwrite=True)


def resolve_sae_path(ref: str | os.PathLike) -> Path:
    """A local sae-vit checkpoint for ``ref`` (see the module docstring); every failure is one line."""
    from sae_vit.io.interop import detect_format
    from sae_vit.io.released import is_released_name, released_uri

    if is_released_name(ref) and not Path(ref).exists():
        ref = released_uri(str(ref))
    if _is_hf(ref):
        from sae_vit.io.hub import resolve_hf_uri

        return resolve_hf_uri(str(ref))
    p = Path(ref)
    if not p.exists():
        raise SaeVitError(f"SAE checkpoint {p} does not exist; check the path or train one with `saevit train`.")
    try:
        fmt = detect_format(p)
    except SaeVitError:
        if p.is_file():
            return p  # not a foreign layout either: the checkpoint reader says what is wrong with the file
        raise
    if fmt == "sae_vit":
        return _sae.local_checkpoint(p)
    return _converted_local(p if p.is_dir() or fmt == "prisma" else p.parent, fmt)


def load_sae(ref: str | os.PathLike, device: str = "cpu") -> _sae.SAE:
    """Load any SAE reference (file, folder in any supported format, ``hf://...``, released name) as an
    :class:`SAE`; the same as :meth:`SAE.from_pretrained`."""
    return _sae.SAE.load(resolve_sae_path(ref), device)


def find_saes(refs: list[str | os.PathLike] | None) -> list[Path]:
    """SAE arguments -> local checkpoint paths. A folder that is not itself one SAE is searched recursively for
    sae-vit checkpoints; no arguments means every SAE in the working folder's ``saes``."""
    if not refs:
        root = default_sae_dir()
        found = sorted(root.rglob("*.safetensors")) if root.is_dir() else []
        if not found:
            raise SaeVitError(f"No SAEs in {root}; train one with `saevit train --layer 8 --tokens cls` or pass --sae.")
        return found
    paths: list[Path] = []
    for ref in refs:
        p = Path(str(ref))
        if not _is_hf(ref) and p.is_dir() and not _is_one_sae(p):
            found = sorted(f for f in p.rglob("*.safetensors") if _sae.is_checkpoint(f))
            if not found:
                raise SaeVitError(f"No SAE checkpoints in {p}; train some with `saevit train` or pass a file.")
            paths.extend(found)
        else:
            paths.append(resolve_sae_path(ref))
    return list(dict.fromkeys(paths))


def _is_one_sae(folder: Path) -> bool:
    from sae_vit.io.interop import detect_format

    try:
        detect_format(folder)
    except SaeVitError:
        return False
    return True


_sae.REF_RESOLVER[:] = [resolve_sae_path]
