"""Options that mean the same in every command, declared once so their names, defaults and help agree."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from sae_vit.core.defaults import REAL_CLIP


def _choices(name: str, *values: str) -> type[StrEnum]:
    """A fixed set of option values: Typer lists them in --help, completes them, and rejects any other at parse
    time (exit code 2). Written out here, not imported, so --help stays free of torch; tests/test_cli_json.py
    checks each set against the library's own tuple."""
    return StrEnum(name, [(v, v) for v in values])


Site = _choices("Site", "resid_post", "mlp_out", "mlp_hidden")
Tokens = _choices("Tokens", "cls", "patches", "all")
SteerTokens = _choices("SteerTokens", "sae", "all", "patches", "cls")
Arch = _choices("Arch", "topk", "relu")
Normalization = _choices("Normalization", "none", "layer_norm", "constant")
CacheDtype = _choices("CacheDtype", "float16", "bfloat16", "float32")
Precision = _choices("Precision", "fp32", "bf16")
BDecInit = _choices("BDecInit", "mean", "geometric_median", "zeros")
StrengthUnit = _choices("StrengthUnit", "auto", "absolute", "relative")
WorldTask = _choices("WorldTask", "shapes", "typographic", "waterbirds", "celeba")
SuppressTask = _choices("SuppressTask", "waterbirds", "celeba", "csv")
Ranking = _choices("Ranking", "mean_diff", "auroc", "text")
ConvertFrom = _choices("ConvertFrom", "auto", "sae_vit", "saelens", "sparsify", "prisma")
ExportFormat = _choices("ExportFormat", "saelens")
Position = _choices("Position", "random", "top", "middle", "bottom")

Model = Annotated[str, typer.Option(
    "--model", help=f"'toy' (built-in toy CLIP) or a timm ViT name, e.g. {REAL_CLIP}; env SAEVIT_MODEL.")]
SaeModel = Annotated[str | None, typer.Option(
    "--model", help="Backbone; default: the model the SAE was trained on.")]
Weights = Annotated[Path | None, typer.Option(
    "--weights", help="Local weights file for --model (safetensors or a PyTorch state dict; for toy, also a "
                      "toy-CLIP file).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
#: ``--overwrite`` of a command whose outputs are all derived (tables, plots, pages: regenerated on every run, the
#: README's re-run rule): hidden from --help, since it changes nothing, and still accepted so older scripts run.
Regenerated = Annotated[bool, typer.Option("--overwrite", hidden=True, help="Ignored: outputs are regenerated.")]
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
World = Annotated[WorldTask | None, typer.Option(
    "--world", help="Synthetic task without --images (default: shapes).")]
FeatureIds = Annotated[str | None, typer.Option("--features", help="Feature indices, e.g. 3,17.")]

# The SAE recipe (train, and sparsity --grid).
Architecture = Annotated[Arch, typer.Option("--architecture", help="topk, or relu (ReLU + L1).")]
K = Annotated[int, typer.Option("--k", min=1, help="Active latents per token (topk).")]
Expansion = Annotated[int, typer.Option("--expansion", min=1, help="d_sae = expansion x d_in.")]
L1 = Annotated[float, typer.Option("--l1-coefficient", help="L1 weight (relu).")]

#: ``--json``: the command's result as one JSON document on stdout (progress and notes stay on stderr).
Json = Annotated[bool, typer.Option(
    "--json", callback=lambda on: _json_mode(on),
    help="Print the result as one JSON document on stdout (notes and progress on stderr).")]


def _json_mode(on: bool) -> bool:
    from sae_vit.cli._ui import json_mode

    json_mode(on)
    return on
