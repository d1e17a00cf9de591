"""Options that mean the same in every command, declared once so their names, defaults and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sae_vit.core.defaults import REAL_CLIP

Model = Annotated[str, typer.Option(
    "--model", help=f"'toy' (built-in toy CLIP) or a timm ViT name, e.g. {REAL_CLIP}; env SAEVIT_MODEL.")]
SaeModel = Annotated[str | None, typer.Option(
    "--model", help="Backbone; default: the model the SAE was trained on.")]
Weights = Annotated[Path | None, typer.Option(
    "--weights", help="Local weights file for --model (safetensors or a PyTorch state dict; for toy, also a "
                      "toy-CLIP file).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Device = Annotated[str, typer.Option(
    "--device", help="auto (CUDA when available), cpu, cuda or cuda:N; under torchrun cuda is cuda:LOCAL_RANK.")]
Seed = Annotated[int, typer.Option("--seed")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1)]
#: Every option or argument that takes an SAE is a string: ``Path`` would turn ``hf://owner/repo`` into ``hf:/...``.
SAE_HELP = "an sae-vit checkpoint or folder, a SAELens or sparsify folder, or hf://owner/repo[/path][@revision]"
TextEmbeddings = Annotated[Path | None, typer.Option(
    "--text-embeddings", help="safetensors with 'embeddings' [n, d] and 'names' in its metadata (instead of a "
                              "text tower).")]
Vocab = Annotated[Path | None, typer.Option(
    "--vocab", help="Concept words, one per line. Default for the toy CLIP: the world's words.")]

Images = Annotated[Path | None, typer.Option(
    "--images", help="Image folder (recursive) or a CSV with a 'path' column. Default: the synthetic world.")]
World = Annotated[str | None, typer.Option(
    "--world", help="Synthetic task without --images: shapes (default), typographic, waterbirds, celeba.")]
FeatureIds = Annotated[str | None, typer.Option("--features", help="Feature indices, e.g. 3,17.")]

# The SAE recipe (train, and sparsity --grid).
Architecture = Annotated[str, typer.Option("--architecture", help="topk or relu (ReLU + L1).")]
K = Annotated[int, typer.Option("--k", min=1, help="Active latents per token (topk).")]
Expansion = Annotated[int, typer.Option("--expansion", min=1, help="d_sae = expansion x d_in.")]
L1 = Annotated[float, typer.Option("--l1-coefficient", help="L1 weight (relu).")]
