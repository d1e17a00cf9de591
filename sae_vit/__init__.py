"""sae-vit: sparse autoencoders on CLIP vision transformers.

The Python API, one import away (each name is loaded on first use, so ``import sae_vit`` and ``saevit --help``
do not import torch)::

    from sae_vit import SAE, load_backbone, splice, cache, train, TrainConfig

    sae = SAE.from_pretrained("clip-b32/resid_post/layer_8")      # or a file, a folder, hf://owner/repo/path
    f, norm = sae.encode(x, return_norm=True); x_hat = sae.decode(f, norm)

SAEs: :class:`SAE` (``from_pretrained``, ``encode``, ``decode``, ``edit``, ``save``), :class:`SAEConfig`,
:class:`SAEOutput`, :class:`TokenNorm`, :func:`load_sae`, :func:`list_released` (the paper's SAEs on the Hub, as
:class:`ReleasedSAE` rows).
Models: :func:`load_backbone` (``toy`` or a timm ViT), :class:`Backbone`, :func:`splice` (edit activations at a
hook during the forward pass), :class:`TextHead`.
The steps of the command line, same arguments: :func:`cache`, :func:`train` (with :class:`TrainConfig`),
:func:`sparsity`, :func:`score_saes` (``steer-score``, with :class:`SteerConfig`), :func:`inspect_sae`,
:func:`suppress` (with :class:`SuppressConfig`), :func:`run_demo` (with :class:`DemoConfig`).
The synthetic world: :func:`world_images` (``(id, PIL image)`` pairs of a task split), :func:`export_task` (a task
written in its real dataset's layout, e.g. Waterbirds).
Errors a user can cause: :class:`SaeVitError`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> module that defines it.
_HOMES = {name: module for module, names in {
    "sae_vit.core.sae": ("SAE", "SAEConfig", "SAEOutput", "TokenNorm"),
    "sae_vit.io.resolve": ("load_sae",),
    "sae_vit.io.released": ("list_released", "ReleasedSAE"),
    "sae_vit.core.backbone": ("load_backbone", "Backbone", "splice"),
    "sae_vit.core.text": ("TextHead",),
    "sae_vit.core.train": ("TrainConfig",),
    "sae_vit.pipeline": ("cache", "train", "sparsity"),
    "sae_vit.pipeline.demo": ("run_demo", "DemoConfig"),
    "sae_vit.analysis.steer": ("score_saes", "SteerConfig"),
    "sae_vit.analysis.inspect": ("inspect_sae",),
    "sae_vit.analysis.suppress": ("suppress", "SuppressConfig"),
    "sae_vit.world.scenes": ("world_images", "export_task"),
    "sae_vit.core.errors": ("SaeVitError",),
}.items() for name in names}

#: Names whose use may load an SAE: the one resolver (hf://, foreign folders, released names) is installed into
#: ``sae_vit.core.sae.REF_RESOLVER`` before they are handed out.
_NEED_RESOLVER = {"SAE", "SAEConfig", "SAEOutput", "TokenNorm", "load_sae"}

__all__ = list(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sae_vit' has no attribute {name!r}")
    if name in _NEED_RESOLVER:
        importlib.import_module("sae_vit.io.resolve")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


# No ``if TYPE_CHECKING:`` imports here: the core imports ``sae_vit.__version__``, and import-linter would read
# them as every layer importing every other through this package.
def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

