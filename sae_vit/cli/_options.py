"""Options that mean the same in every command, declared once so their names, defaults and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sae_vit.core.defaults import REAL_CLIP

ModelOpt = Annotated[str, typer.Option(
    "--model", help=f"'toy' (built-in toy CLIP) or a timm ViT name, e.g. {REAL_CLIP}; env SAEVIT_MODEL.")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", help="Local weights file for --model (safetensors or a PyTorch state dict).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (CUDA when available), cpu, cuda or cuda:N; under torchrun cuda is cuda:LOCAL_RANK.")]
#: Every option or argument that takes an SAE is a string: ``Path`` would turn ``hf://owner/repo`` into ``hf:/...``.
SAE_HELP = "an sae-vit checkpoint or folder, a SAELens or sparsify folder, or hf://owner/repo[/path][@revision]"
TextEmbeddingsOpt = Annotated[Path | None, typer.Option(
    "--text-embeddings", help="safetensors with 'embeddings' [n, d] and 'names' in its metadata (instead of a "
                              "text tower).")]
