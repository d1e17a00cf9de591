"""``saevit push``, ``pull``, ``list`` (the Hugging Face Hub) and ``convert``, ``export`` (other SAE
libraries)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import sae_vit.cli._options as opt
from sae_vit.cli._ui import note, print_table, result, say
from sae_vit.core.errors import SaeVitError


def push_cmd(
    sae: Annotated[Path, typer.Argument(help="An SAE checkpoint, or a folder of them (e.g. <workdir>/saes).")],
    repo: Annotated[str, typer.Argument(help="Target repo, owner/name (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option(
        "--revision", "--branch", help="Branch to push to (created if missing). Default: main.")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    as_json: opt.Json = False,
) -> None:
    """Upload SAEs to the Hugging Face Hub as layer_{L}/{tokens}/sae.safetensors with a model card.

    Uses huggingface_hub's credentials: `hf auth login` or HF_TOKEN.
    """
    from sae_vit.io.hub import push

    pushed = push(sae, repo, private, revision, message)
    result(url=pushed.url, revision=pushed.revision, files=pushed.files)
    n = sum(f.endswith(".safetensors") for f in pushed.files)
    say(f"pushed {n} SAE(s) + README.md to {pushed.url}" + (f" (branch {pushed.revision})" if pushed.revision else ""))
    for f in pushed.files:
        say(f"  {f}")


def pull_cmd(
    ref: Annotated[str, typer.Argument(help="owner/repo[/path][@revision] (hf:// prefix optional).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Also copy the checkpoints here as <path>/sae.safetensors. Default: only the HF cache.")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="Only list the SAEs the repo holds.")] = False,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """Download SAEs from the Hub into its cache; works offline once cached (HF_HUB_OFFLINE=1).

    ViT-Prisma, SAELens and sparsify repos are converted to sae-vit checkpoints on the way.
    """
    if list_only:
        _print_list(ref)
        return
    from sae_vit.io.hub import pull

    pulled = pull(ref, out, overwrite)
    result(pulled=[{"path": p.path, "local": p.local} for p in pulled])
    for p in pulled:
        say(f"{p.path or '.'} -> {p.local}")
    say(f"pulled {len(pulled)} SAE(s); load them by path or as hf://{ref.removeprefix('hf://')}")


def list_cmd(
    repo: Annotated[str | None, typer.Argument(help="owner/repo[@revision].")] = None,
    released: Annotated[bool, typer.Option(
        "--released", help="List the paper's released SAEs by name instead (no Hub access).")] = False,
    as_json: opt.Json = False,
) -> None:
    """List the SAEs a Hub repo holds (from its file list; offline, from the local cache), or with --released the
    registered names of the paper's SAEs, each loadable by name (SAE.from_pretrained, every command)."""
    if released == (repo is not None):
        raise SaeVitError("Pass either a Hub repo (saevit list owner/repo) or --released.")
    if released:
        _print_released()
    else:
        _print_list(repo)


def _print_released() -> None:
    from sae_vit.io.released import list_released

    rows = list_released()
    cols = ("name", "Hub repo", "layer", "site", "expansion", "architecture", "L1 / k")
    print_table("The paper's released SAEs (CLIP ViT-B/32, ViT-Prisma)", cols, [
        (r.name, r.repo, r.layer, r.site, r.expansion, r.architecture,
         r.k if r.architecture == "topk" else r.l1_coefficient) for r in rows], left=cols[:2], overflow="fold")
    say(f"{len(rows)} SAEs; load one by name, e.g. SAE.from_pretrained({rows[0].name!r}) or "
        f"saevit sparsity {rows[0].name}")


def convert_cmd(
    src: Annotated[str, typer.Argument(
        help="A foreign SAE: its folder (or weights file), or hf://owner/repo[/path][@revision].")],
    to: Annotated[Path, typer.Option("--to", help="Output checkpoint (.safetensors) or folder.")],
    fmt: Annotated[opt.ConvertFrom, typer.Option(
        "--from", help="The source library; auto detects it from the files.")] = opt.ConvertFrom.auto,
    layer: Annotated[int | None, typer.Option("--layer", help="Set the layer when the source lacks it.")] = None,
    site: Annotated[opt.Site | None, typer.Option("--site", help="Set the hook site.")] = None,
    tokens: Annotated[opt.Tokens | None, typer.Option("--tokens", help="Set the token selection.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Set the backbone name.")] = None,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """Convert an SAE saved by SAELens, EleutherAI sparsify or ViT-Prisma into an sae-vit checkpoint."""
    import dataclasses

    from sae_vit.core.sae import read_checkpoint
    from sae_vit.io.interop import convert
    from sae_vit.io.resolve import resolve_sae_path

    if src.startswith("hf://"):  # the Hub cache converts a foreign repo once; --from is for local files
        if fmt != "auto":
            raise SaeVitError("--from applies to local folders; an hf:// repo's format is detected from its files.")
        src = resolve_sae_path(src)
    path = convert(src, to, fmt, overwrite, layer=layer, site=site, tokens=tokens, model=model)
    cfg, _ = read_checkpoint(path)
    result(path=path, config=dataclasses.asdict(cfg))
    say(f"converted {cfg.architecture} SAE d_in={cfg.d_in} d_sae={cfg.d_sae} (layer {cfg.layer}, {cfg.site}, "
        f"tokens={cfg.tokens}, normalization={cfg.normalization}) -> {path}")


def export_cmd(
    sae: Annotated[str, typer.Argument(help=f"The SAE: {opt.SAE_HELP}.")],
    to: Annotated[Path, typer.Option("--to", help="Output folder.")],
    fmt: Annotated[opt.ExportFormat, typer.Option("--format", help="Target layout.")] = opt.ExportFormat.saelens,
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
) -> None:
    """Write an sae-vit checkpoint in another library's layout (SAELens: cfg.json + sae_weights.safetensors)."""
    from sae_vit.io.interop import export
    from sae_vit.io.resolve import resolve_sae_path  # any reference: file, folder, hf://, released name

    folder = export(resolve_sae_path(sae), to, fmt, overwrite)
    result(folder=folder)
    say(f"exported {sae} as {fmt} -> {folder}")


def _print_list(spec: str) -> None:
    from sae_vit.io.hub import list_repo, parse_ref

    entries, from_cache = list_repo(spec)
    ref = parse_ref(spec)
    rev = f"@{ref.revision}" if ref.revision else ""
    cols = ("path", "format", "layer", "site", "tokens")
    title = f"SAEs in {ref.repo_id}{rev}" + (" (local cache; may be partial)" if from_cache else "")
    rows = [(e.path or ".", e.format, "" if e.layer is None else e.layer, e.site or "", e.tokens or "")
            for e in entries]
    print_table(title, cols, rows, left=cols, overflow="fold")
    if not entries:
        note(f"no SAE files found in {ref.repo_id}", "yellow")
        return
    say(f"load one as hf://{ref.repo_id}/<path>{rev}, or all with `saevit pull {ref.repo_id}{rev}`")
