"""A hostile or clumsy user's bad inputs, one per case, across every command (issue 15).

Every case must end the same way: exit code 2, exactly one line on stderr (``error: ...``, naming the problem and
its fix), no traceback, and no file changed anywhere: neither the shared inputs (one tiny cache, one tiny SAE,
built once per session) nor the case's own folder, where user files sit next to and inside the outputs.

A case is ``(id, args, setup, fragment)``: ``args`` may hold ``{S}`` (the shared folder) and ``{T}`` (the case's
own folder); ``setup(T, S)`` writes the case's bad files first; ``fragment`` must appear in the error line (so that
a case fails for the reason it is about). Commands run in-process with Typer's CliRunner.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sae_vit.cli import app
from sae_vit.core.sae import METADATA_KEY, SAE, SAEConfig

runner = CliRunner()


# -- the shared inputs, built once ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """S/cache (toy CLIP, 40 world images, layer 2, finished), S/partial (the same, 2 of 5 shards), S/sae.safetensors
    (a random TopK SAE for layer 2 of the toy CLIP), S/images (4 PNGs), S/text.txt, S/empty/."""
    from sae_vit.core.backbone import load_backbone
    from sae_vit.io.cache import write_cache
    from sae_vit.world.sources import open_source
    from tests.conftest import write_images

    root = tmp_path_factory.mktemp("shared")
    backbone = load_backbone("toy", None, "cpu")
    source = open_source(None, "shapes", n=40, seed=0)
    write_cache(backbone, source, root / "cache", [2], batch_size=40, images_per_shard=8)
    write_cache(backbone, source, root / "partial", [2], batch_size=40, images_per_shard=8, stop_after_shards=2)
    toy_sae(root / "sae.safetensors")
    write_images(root / "images", 4)
    (root / "text.txt").write_text("not an image, not a checkpoint\n")
    (root / "empty").mkdir()
    return root


def toy_sae(path, **cfg):
    torch.manual_seed(0)
    settings = {"d_in": 64, "d_sae": 32, "k": 4, "model": "toy", "layer": 2, "tokens": "all", **cfg}
    return SAE(SAEConfig(**settings)).save(path, overwrite=True)


# -- setups: the bad files a case needs, written into its own folder T --------------------------------------------
def user_files(*names):
    """User files at ``names`` (relative to T): they must survive byte-identical."""
    def setup(T, S):
        for name in names:
            (T / name).parent.mkdir(parents=True, exist_ok=True)
            (T / name).write_text(f"the user's own {name}\n")
    return setup


def copied_cache(damage=None, name="cache"):
    """T/cache: a copy of the shared cache, then ``damage(T / 'cache')``."""
    def setup(T, S):
        shutil.copytree(S / name, T / "cache")
        if damage:
            damage(T / "cache")
    return setup


def edit_manifest(edit):
    def damage(cache):
        m = json.loads((cache / "manifest.json").read_text())
        edit(m)
        (cache / "manifest.json").write_text(json.dumps(m))
    return copied_cache(damage)


def edit_shard(change):
    def damage(cache):
        path = cache / "layer_2" / "shard_00001.safetensors"
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        tensors = load_file(str(path))
        change(tensors, meta)
        save_file(tensors, str(path), metadata=meta)
    return copied_cache(damage)


def checkpoint(meta_edit=None, tensor_edit=None, raw_meta=None):
    """T/bad.safetensors: the shared SAE with its metadata or tensors changed."""
    def setup(T, S):
        from safetensors import safe_open

        with safe_open(str(S / "sae.safetensors"), framework="pt") as fh:
            meta = json.loads(fh.metadata()[METADATA_KEY])
        tensors = load_file(str(S / "sae.safetensors"))
        if meta_edit:
            meta.update(meta_edit)
        if tensor_edit:
            tensor_edit(tensors)
        text = json.dumps(meta) if raw_meta is None else raw_meta
        save_file(tensors, str(T / "bad.safetensors"), metadata={METADATA_KEY: text})
    return setup


def write(name, data):
    def setup(T, S):
        (T / name).parent.mkdir(parents=True, exist_ok=True)
        (T / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def truncated_checkpoint(T, S):
    data = (S / "sae.safetensors").read_bytes()
    (T / "bad.safetensors").write_bytes(data[: len(data) // 2])


def plain_safetensors(T, S):
    save_file({"x": torch.zeros(3)}, str(T / "bad.safetensors"))


def text_embeddings(tensors, names=None):
    def setup(T, S):
        meta = {"names": json.dumps(names)} if names is not None else None
        save_file(tensors, str(T / "emb.safetensors"), metadata=meta)
    return setup


def held_lock(T, S):
    """T/cache is being written by another process (its lock held by this test, as a second process would)."""
    from sae_vit.io import cache as cache_mod

    lock = cache_mod.cache_lock(T / "cache")
    lock.__enter__()
    HELD.append(lock)


HELD: list = []


def nan_weight(name):
    def edit(tensors):
        tensors[name].view(-1)[0] = float("nan")
    return edit


def both(*setups):
    def setup(T, S):
        for s in setups:
            s(T, S)
    return setup


def previous_export(T, S):
    from sae_vit.io.interop import to_saelens

    to_saelens(SAE.load(S / "sae.safetensors"), T / "exported")


# -- the cases ---------------------------------------------------------------------------------------------------
CACHE = ["cache", "--model", "toy", "--max-images", "8", "--layers", "2", "--batch-size", "8", "--out", "{T}/cache"]
TRAIN = ["train", "--cache", "{S}/cache", "--layer", "2", "--out", "{T}/sae.safetensors", "--n-tokens", "256",
         "--device", "cpu"]
SPARSITY = ["sparsity", "{S}/sae.safetensors", "--cache", "{S}/cache", "--out", "{T}/sparsity.csv"]
STEER = ["steer-score", "--sae", "{S}/sae.safetensors", "--out", "{T}/steer", "--n-images", "4", "--device", "cpu"]
INSPECT = ["inspect", "--sae", "{S}/sae.safetensors", "--out", "{T}/inspect", "--n-images", "4", "--device", "cpu"]
SUPPRESS = ["suppress", "--sae", "{S}/sae.safetensors", "--task", "csv", "--out", "{T}/suppress"]
EXPORT = ["export", "{S}/sae.safetensors", "--to", "{T}/exported"]
CONVERT = ["convert", "{S}/sae.safetensors", "--to", "{T}/converted.safetensors"]

CASES = [
    # ---- cache: options
    ("cache layers out of range", [*CACHE[:-6], "--layers", "99", *CACHE[-4:]], None, "Layer 99"),
    ("cache negative layer", [*CACHE[:-6], "--layers", "-1", *CACHE[-4:]], None, "--layers"),
    ("cache layers words", [*CACHE[:-6], "--layers", "a,b", *CACHE[-4:]], None, "--layers"),
    ("cache layers empty", [*CACHE[:-6], "--layers", ",", *CACHE[-4:]], None, "--layers"),
    ("cache unknown site", [*CACHE, "--site", "resid_pre"], None, "--site"),
    ("cache unknown tokens", [*CACHE, "--tokens", "foo"], None, "--tokens"),
    ("cache int8 dtype", [*CACHE, "--dtype", "int8"], None, "--dtype"),
    ("cache fp8 precision", [*CACHE, "--precision", "fp8"], None, "--precision"),
    ("cache zero batch", [*CACHE, "--batch-size", "0"], None, "--batch-size"),
    ("cache zero images per shard", [*CACHE, "--images-per-shard", "0"], None, "--images-per-shard"),
    ("cache negative workers", [*CACHE, "--num-workers", "-1"], None, "--num-workers"),
    ("cache zero max images", [*CACHE, "--max-images", "0"], None, "--max-images"),
    ("cache device banana", [*CACHE, "--device", "banana"], None, "banana"),
    ("cache device cuda:7", [*CACHE, "--device", "cuda:7"], None, "cuda"),
    ("cache seed not a number", [*CACHE, "--seed", "one"], None, "--seed"),
    ("cache unknown option", [*CACHE, "--bogus"], None, "--bogus"),
    ("cache missing images", [*CACHE, "--images", "{T}/nope"], None, "does not exist"),
    ("cache images markup path", [*CACHE, "--images", "{T}/c[/red]"], None, "c[/red]"),
    ("cache images a text file", [*CACHE, "--images", "{S}/text.txt"], None, "text.txt"),
    ("cache images empty folder", [*CACHE, "--images", "{S}/empty"], None, "No images"),
    ("cache csv without path column", [*CACHE, "--images", "{T}/index.csv"], write("index.csv", "name\nx.png\n"),
     "no image path column"),
    ("cache csv with no rows", [*CACHE, "--images", "{T}/index.csv"], write("index.csv", "path\n"), "lists no images"),
    ("cache csv binary garbage", [*CACHE, "--images", "{T}/index.csv"], write("index.csv", b"\xff\xfe\x00\x81" * 64),
     "index.csv"),
    ("cache images and world", [*CACHE, "--images", "{S}/images", "--world", "shapes"], None, "either"),
    ("cache unknown world", [*CACHE, "--world", "forest"], None, "forest"),
    ("cache missing weights", [*CACHE, "--weights", "{T}/w.safetensors"], None, "--weights"),
    ("cache garbage weights", [*CACHE, "--weights", "{S}/text.txt"], None, "text.txt"),
    ("cache out is a file", [*CACHE[:-1], "{S}/text.txt"], None, "text.txt"),
    ("cache out holds user files", CACHE, user_files("cache/thesis.tex"), "thesis.tex"),
    ("cache overwrite with user files", [*CACHE, "--overwrite"], user_files("cache/notes/plan.txt"), "plan.txt"),
    ("cache overwrite layer_notes", [*CACHE, "--overwrite"],
     both(copied_cache(), user_files("cache/layer_notes/my_shard_plan.txt")), "my_shard_plan.txt"),
    ("cache finished other settings", [*CACHE[:-6], "--layers", "1", *CACHE[-4:]], copied_cache(),
     "already holds a finished cache"),
    ("cache unfinished other settings", [*CACHE[:-6], "--layers", "1", *CACHE[-4:]], copied_cache(name="partial"),
     "other settings"),
    ("cache locked by another writer", CACHE, held_lock, "being written by"),
    ("cache corrupt manifest", CACHE, both(copied_cache(), write("cache/manifest.json", "{not json")), "corrupted"),
    ("cache manifest a list", CACHE, both(copied_cache(), write("cache/manifest.json", "[1, 2]")), "JSON object"),
    # ---- train: options
    ("train layer not cached", [*TRAIN[:3], "--layer", "5", *TRAIN[5:]], None, "no layer 5"),
    ("train layer word", [*TRAIN[:3], "--layer", "x", *TRAIN[5:]], None, "--layers"),
    ("train tokens foo", [*TRAIN, "--tokens", "foo"], None, "foo"),
    ("train tokens list with foo", [*TRAIN, "--tokens", "cls,foo"], None, "foo"),
    ("train k zero", [*TRAIN, "--k", "0"], None, "--k"),
    ("train k negative", [*TRAIN, "--k", "-3"], None, "--k"),
    ("train k above d_sae", [*TRAIN, "--k", "100000", "--expansion", "1"], None, "k"),
    ("train expansion zero", [*TRAIN, "--expansion", "0"], None, "--expansion"),
    ("train d_sae zero", [*TRAIN, "--d-sae", "0"], None, "--d-sae"),
    ("train lr nan", [*TRAIN, "--lr", "nan"], None, "--lr"),
    ("train lr inf", [*TRAIN, "--lr", "inf"], None, "--lr"),
    ("train lr negative", [*TRAIN, "--lr", "-1e-3"], None, "--lr"),
    ("train lr word", [*TRAIN, "--lr", "fast"], None, "--lr"),
    ("train grad clip nan", [*TRAIN, "--grad-clip", "nan"], None, "--grad-clip"),
    ("train grad clip negative", [*TRAIN, "--grad-clip", "-1"], None, "--grad-clip"),
    ("train grad clip inf", [*TRAIN, "--grad-clip", "inf"], None, "--grad-clip"),
    ("train l1 nan", [*TRAIN, "--l1-coefficient", "nan"], None, "--l1-coefficient"),
    ("train l1 negative", [*TRAIN, "--l1-coefficient", "-1"], None, "--l1-coefficient"),
    ("train epochs zero", [*TRAIN[:-4], "--epochs", "0", "--device", "cpu"], None, "--epochs"),
    ("train epochs nan", [*TRAIN[:-4], "--epochs", "nan", "--device", "cpu"], None, "--epochs"),
    ("train epochs negative", [*TRAIN[:-4], "--epochs", "-2", "--device", "cpu"], None, "--epochs"),
    ("train n tokens zero", [*TRAIN[:-4], "--n-tokens", "0"], None, "--n-tokens"),
    ("train warmup negative", [*TRAIN, "--warmup-steps", "-1"], None, "--warmup-steps"),
    ("train schedule banana", [*TRAIN, "--schedule", "banana"], None, "banana"),
    ("train architecture gated", [*TRAIN, "--architecture", "gated"], None, "--architecture"),
    ("train normalization batch", [*TRAIN, "--normalization", "batch"], None, "--normalization"),
    ("train b_dec init median", [*TRAIN, "--b-dec-init", "median"], None, "--b-dec-init"),
    ("train precision fp8", [*TRAIN, "--precision", "fp8"], None, "--precision"),
    ("train batch zero", [*TRAIN, "--batch-size", "0"], None, "--batch-size"),
    ("train device banana", [*TRAIN[:-2], "--device", "banana"], None, "banana"),
    ("train seed word", [*TRAIN, "--seed", "x"], None, "--seed"),
    ("train no layer", ["train", "--cache", "{S}/cache"], None, "--layer"),
    # ---- train: caches
    ("train missing cache", [*TRAIN[:2], "{T}/nope", *TRAIN[3:]], None, "not an activation cache"),
    ("train empty folder as cache", [*TRAIN[:2], "{S}/empty", *TRAIN[3:]], None, "not an activation cache"),
    ("train unfinished cache", [*TRAIN[:2], "{S}/partial", *TRAIN[3:]], None, "--allow-incomplete"),
    ("train corrupt manifest", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     both(copied_cache(), write("cache/manifest.json", "{")), "corrupted"),
    ("train manifest a list", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     both(copied_cache(), write("cache/manifest.json", "[]")), "JSON object"),
    ("train manifest without layers", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]], edit_manifest(lambda m: m.pop("layers")),
     "'layers' is missing"),
    ("train manifest without shards", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]], edit_manifest(lambda m: m.pop("shards")),
     "'shards' is missing"),
    ("train manifest wrong d_model", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m.update(d_model=32)), "expected"),
    ("train manifest float d_model", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m.update(d_model=64.0)), "'d_model' is 64.0"),
    ("train manifest format 99", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m.update(format_version=99)), "format 99"),
    ("train manifest tokens foo", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m.update(tokens="foo")), "'tokens' is 'foo'"),
    ("train manifest int8 dtype", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m.update(dtype="int8")), "'dtype' is 'int8'"),
    ("train manifest shard count word", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m["shards"][0].update(n_tokens="many")), "'n_tokens' is 'many'"),
    ("train manifest complete but short", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m["shards"].pop()), "says complete"),
    ("train manifest duplicate shard", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_manifest(lambda m: m["shards"][1].update(index=0)), "shard indices"),
    ("train truncated shard", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     copied_cache(lambda c: (c / "layer_2/shard_00001.safetensors").write_bytes(
         (c / "layer_2/shard_00001.safetensors").read_bytes()[:300])), "damaged"),
    ("train missing shard", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     copied_cache(lambda c: (c / "layer_2/shard_00001.safetensors").unlink()), "missing"),
    ("train int8 shard", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_shard(lambda t, m: t.update(acts=t["acts"].to(torch.int8))), "acts are I8"),
    ("train shard from another site", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_shard(lambda t, m: m.update(site="mlp_out")), "site 'mlp_out'"),
    ("train shard from another source", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_shard(lambda t, m: m.update(source="0000000000000000")), "records source"),
    ("train shard fewer acts rows", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_shard(lambda t, m: t.update(acts=t["acts"][:-3])), "expected"),
    ("train shard fewer index rows", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_shard(lambda t, m: t.update(token_index=t["token_index"][:-3])), "token_index"),
    ("train shard without acts", [*TRAIN[:2], "{T}/cache", *TRAIN[3:]],
     edit_shard(lambda t, m: t.pop("acts")), "not acts"),
    # ---- train: destinations
    ("train out exists", [*TRAIN[:6], "{S}/sae.safetensors", *TRAIN[7:]], None, "--overwrite"),
    ("train out is a folder", [*TRAIN[:6], "{S}/empty", *TRAIN[7:], "--overwrite"], None, "is a folder"),
    ("train out under a file", [*TRAIN[:6], "{S}/text.txt/sae.safetensors", *TRAIN[7:]], None, "not a folder"),
    # ---- sparsity
    ("sparsity missing sae", ["sparsity", "{T}/nope.safetensors", *SPARSITY[2:]], None, "does not exist"),
    ("sparsity text file as sae", ["sparsity", "{S}/text.txt", *SPARSITY[2:]], None, "text.txt"),
    ("sparsity truncated checkpoint", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], truncated_checkpoint,
     "bad.safetensors"),
    ("sparsity plain safetensors", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], plain_safetensors,
     "not an sae-vit checkpoint"),
    ("sparsity d_in float", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"d_in": 64.0}), "d_in"),
    ("sparsity k true", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"k": True}), "integer k"),
    ("sparsity k 8.5", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"k": 8.5}), "integer k"),
    ("sparsity tokens foo", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"tokens": "foo"}),
     "tokens must be"),
    ("sparsity site attn", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"site": "attn"}),
     "site must be"),
    ("sparsity layer -1", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"layer": -1}),
     "layer must be"),
    ("sparsity training a list", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"training": []}),
     "training must be"),
    ("sparsity metadata a list", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint(raw_meta="[1, 2]"),
     "not an object"),
    ("sparsity metadata null", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint(raw_meta="null"),
     "not an object"),
    ("sparsity metadata not json", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint(raw_meta="{x"),
     "corrupted"),
    ("sparsity format 99", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]], checkpoint({"format_version": 99}),
     "format version 99"),
    ("sparsity nan weights", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]],
     checkpoint(tensor_edit=nan_weight("W_dec")), "W_dec holds"),
    ("sparsity inf bias", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]],
     checkpoint(tensor_edit=lambda t: t["b_enc"].fill_(float("inf"))), "b_enc holds"),
    ("sparsity weight wrong shape", ["sparsity", "{T}/bad.safetensors", *SPARSITY[2:]],
     checkpoint(tensor_edit=lambda t: t.update(b_dec=torch.zeros(3))), "shape"),
    ("sparsity missing cache", [*SPARSITY[:3], "{T}/nope", *SPARSITY[4:]], None, "not an activation cache"),
    ("sparsity grid unfinished cache", ["sparsity", "--grid", "--cache", "{S}/partial", "--layers", "2", "--tokens",
                                        "cls", "--out", "{T}/s.csv"], None, "--allow-incomplete"),
    ("sparsity grid layer 99", ["sparsity", "--grid", "--cache", "{S}/cache", "--layers", "99", "--out", "{T}/s.csv"],
     None, "no layer 99"),
    ("sparsity grid tokens foo", ["sparsity", "--grid", "--cache", "{S}/cache", "--tokens", "foo", "--out",
                                  "{T}/s.csv"], None, "foo"),
    ("sparsity grid without cache", ["sparsity", "--grid", "--cache", "{T}/nope", "--out", "{T}/s.csv"], None,
     "needs a cache"),
    ("sparsity k zero", [*SPARSITY, "--k", "0"], None, "--k"),
    ("sparsity l1 nan", [*SPARSITY, "--l1-coefficient", "nan"], None, "--l1-coefficient"),
    ("sparsity out is a folder", [*SPARSITY[:-1], "{S}/empty"], None, "empty"),
    ("sparsity malformed hf ref", ["sparsity", "hf://owner", *SPARSITY[2:]], None, "hf://owner"),
    ("sparsity hf markup ref", ["sparsity", "hf://owner/repo[/red]", *SPARSITY[2:]], None, "[/red]"),
    ("sparsity released name typo", ["sparsity", "clip-b32/resid_post/layer_99", *SPARSITY[2:]], None, None),
    ("sparsity empty folder", ["sparsity", "{S}/empty", *SPARSITY[2:]], None, "No SAE checkpoints"),
    # ---- steer-score
    ("steer missing sae", ["steer-score", "--sae", "{T}/nope", *STEER[3:]], None, "does not exist"),
    ("steer corrupt sae", ["steer-score", "--sae", "{T}/bad.safetensors", *STEER[3:]], truncated_checkpoint,
     "bad.safetensors"),
    ("steer nan sae", ["steer-score", "--sae", "{T}/bad.safetensors", *STEER[3:]],
     checkpoint(tensor_edit=nan_weight("W_enc")), "W_enc holds"),
    ("steer alphas words", [*STEER, "--alphas", "a,b"], None, "--alphas"),
    ("steer alphas nan", [*STEER, "--alphas", "0,nan"], None, "--alphas"),
    ("steer alphas inf", [*STEER, "--alphas", "inf"], None, "--alphas"),
    ("steer temperature zero", [*STEER, "--temperature", "0"], None, "--temperature"),
    ("steer temperature nan", [*STEER, "--temperature", "nan"], None, "--temperature"),
    ("steer threshold nan", [*STEER, "--threshold", "nan"], None, "--threshold"),
    ("steer zero images", [*STEER, "--n-images", "0"], None, "--n-images"),
    ("steer max features zero", [*STEER, "--max-features", "0"], None, "--max-features"),
    ("steer random control negative", [*STEER, "--random-control", "-1"], None, "--random-control"),
    ("steer missing text embeddings", [*STEER, "--text-embeddings", "{T}/emb.safetensors"], None, "--text-embeddings"),
    ("steer garbage text embeddings", [*STEER, "--text-embeddings", "{S}/text.txt"], None, "text.txt"),
    ("steer text embeddings without names", [*STEER, "--text-embeddings", "{T}/emb.safetensors"],
     text_embeddings({"embeddings": torch.zeros(3, 64)}), "emb.safetensors"),
    ("steer text embeddings wrong key", [*STEER, "--text-embeddings", "{T}/emb.safetensors"],
     text_embeddings({"x": torch.zeros(3, 64)}, ["a", "b", "c"]), "emb.safetensors"),
    ("steer missing vocab", [*STEER, "--vocab", "{T}/words.txt"], None, "--vocab"),
    ("steer features words", [*STEER, "--features", "a,b"], None, "--features"),
    ("steer feature out of range", [*STEER, "--features", "99999"], None, "0..31"),
    ("steer strength unit banana", [*STEER, "--strength-unit", "banana"], None, "--strength-unit"),
    ("steer tokens banana", [*STEER, "--tokens", "banana"], None, "--tokens"),
    ("steer device banana", [*STEER[:-2], "--device", "banana"], None, "banana"),
    ("steer images and world", [*STEER, "--images", "{S}/images", "--world", "shapes"], None, "either"),
    ("steer precision fp8", [*STEER, "--precision", "fp8"], None, "--precision"),
    # ---- inspect
    ("inspect missing sae", ["inspect", "--sae", "{T}/nope", *INSPECT[3:]], None, "does not exist"),
    ("inspect nan sae", ["inspect", "--sae", "{T}/bad.safetensors", *INSPECT[3:]],
     checkpoint(tensor_edit=nan_weight("b_dec")), "b_dec holds"),
    ("inspect features words", [*INSPECT, "--features", "x"], None, "--features"),
    ("inspect feature out of range", [*INSPECT, "--features", "99999"], None, "0..31"),
    ("inspect zero images", [*INSPECT, "--n-images", "0"], None, "--n-images"),
    ("inspect zero top images", [*INSPECT, "--top-images", "0"], None, "--top-images"),
    ("inspect garbage text embeddings", [*INSPECT, "--text-embeddings", "{S}/text.txt"], None, "text.txt"),
    ("inspect unknown world", [*INSPECT, "--world", "forest"], None, "forest"),
    ("inspect device banana", [*INSPECT[:-2], "--device", "banana"], None, "banana"),
    ("inspect images missing", [*INSPECT, "--images", "{T}/nope"], None, "does not exist"),
    # ---- suppress
    ("suppress missing data", [*SUPPRESS, "--data", "{T}/nope"], None, "does not exist"),
    ("suppress task banana", [*SUPPRESS, "--data", "{S}/images", "--task", "banana"], None, "--task"),
    ("suppress no metadata", [*SUPPRESS, "--data", "{S}/empty"], None, None),
    ("suppress missing sae", ["suppress", "--sae", "{T}/nope", "--task", "csv", "--data", "{S}/empty", "--out",
                              "{T}/s"], None,
     "does not exist"),
    ("suppress n features words", [*SUPPRESS, "--data", "{S}/empty", "--n-features", "a"], None, "--n-features"),
    ("suppress ranking banana", [*SUPPRESS, "--data", "{S}/empty", "--ranking", "banana"], None, "--ranking"),
    ("suppress layers words", [*SUPPRESS, "--data", "{S}/empty", "--layers", "x"], None, "--layers"),
    ("suppress no data option", SUPPRESS, None, "--data"),
    # ---- demo (options checked before its folder is touched)
    ("demo too few images", ["demo", "--out", "{T}/demo", "--n-images", "10"], None, "--n-images"),
    ("demo zero tokens", ["demo", "--out", "{T}/demo", "--n-tokens", "0"], None, "--n-tokens"),
    ("demo layers words", ["demo", "--out", "{T}/demo", "--layers", "x"], None, "--layers"),
    # ---- push / pull / list
    ("push missing path", ["push", "{T}/nope", "owner/repo"], None, "does not exist"),
    ("push malformed repo", ["push", "{S}/sae.safetensors", "owner"], None, "owner"),
    ("push repo with a path", ["push", "{S}/sae.safetensors", "owner/repo/x"], None, "has a path"),
    ("push folder without checkpoints", ["push", "{S}/empty", "owner/repo"], None, "no sae-vit checkpoints"),
    ("pull malformed ref", ["pull", "owner"], None, "not a Hub reference"),
    ("pull markup ref", ["pull", "hf://owner/repo[/red]"], None, "[/red]"),
    ("pull empty revision", ["pull", "owner/repo@"], None, "owner/repo@"),
    ("pull not in cache offline", ["pull", "owner/repo", "--out", "{T}/pulled"], None, "HF_HUB_OFFLINE"),
    ("list nothing", ["list"], None, "--released"),
    ("list repo and released", ["list", "owner/repo", "--released"], None, "--released"),
    ("list malformed", ["list", "a"], None, "not a Hub reference"),
    ("list not cached offline", ["list", "owner/repo"], None, "HF_HUB_OFFLINE"),
    # ---- convert / export
    ("convert missing source", ["convert", "{T}/nope", "--to", "{T}/c.safetensors"], None, "nope"),
    ("convert empty folder", ["convert", "{S}/empty", "--to", "{T}/c.safetensors"], None, "empty"),
    ("convert from banana", [*CONVERT, "--from", "banana"], None, "--from"),
    ("convert saelens without cfg", ["convert", "{S}/empty", "--from", "saelens", "--to", "{T}/c.safetensors"], None,
     None),
    ("convert to existing", [*CONVERT[:3], "{S}/sae.safetensors"], None, "--overwrite"),
    ("convert hf with from", ["convert", "hf://owner/repo", "--from", "saelens", "--to", "{T}/c.safetensors"], None,
     "--from"),
    ("convert site banana", [*CONVERT, "--site", "banana"], None, "--site"),
    ("export malformed hf ref", ["export", "hf://owner", "--to", "{T}/x"], None, "hf://owner"),
    ("export markup hf ref", ["export", "hf://owner/repo[/red]", "--to", "{T}/x"], None, "[/red]"),
    ("export missing sae", ["export", "{T}/nope", "--to", "{T}/x"], None, "does not exist"),
    ("export format onnx", [*EXPORT, "--format", "onnx"], None, "--format"),
    ("export to a file", [*EXPORT[:3], "{S}/text.txt"], None, "is a file"),
    ("export over a thesis", [*EXPORT, "--overwrite"], user_files("exported/thesis.tex", "exported/sub/data.csv"),
     "which an export did not write"),
    ("export over an export with a thesis", [*EXPORT, "--overwrite"],
     both(previous_export, user_files("exported/thesis.tex")), "thesis.tex"),
    ("export existing without overwrite", EXPORT, previous_export, "--overwrite"),
    ("export nan sae", ["export", "{T}/bad.safetensors", "--to", "{T}/x"], checkpoint(tensor_edit=nan_weight("W_dec")),
     "W_dec holds"),
    # ---- world
    ("world export unknown task", ["world", "export", "--task", "forest", "--out", "{T}/w"], None, "--task"),
    ("world export zero images", ["world", "export", "--task", "shapes", "--out", "{T}/w", "--n", "0"], None, "--n"),
    ("world export into user files", ["world", "export", "--task", "shapes", "--out", "{T}/w", "--n", "2"],
     user_files("w/thesis.tex"), "not empty"),
    ("world train-clip minutes nan", ["world", "train-clip", "--out", "{T}/clip.safetensors", "--minutes", "nan"],
     None, "--minutes"),
    ("world train-clip zero steps", ["world", "train-clip", "--out", "{T}/clip.safetensors", "--steps", "0"], None,
     "--steps"),
    ("world train-clip exists", ["world", "train-clip", "--out", "{S}/text.txt"], None, "--overwrite"),
    ("world show unknown task", ["world", "show", "--task", "forest", "--out", "{T}/s.png"], None, "--task"),
    ("world show too many", ["world", "show", "--n", "5000", "--out", "{T}/s.png"], None, "--n"),
    ("world no subcommand option", ["world", "--bogus"], None, "--bogus"),
    # ---- defend-typo
    ("typo classify missing image", ["defend-typo", "{T}/nope.png", "--classes", "dog,cat"], None, "does not exist"),
    ("typo classify text as image", ["defend-typo", "{S}/text.txt", "--classes", "dog,cat"], None, "text.txt"),
    ("typo classify one class", ["defend-typo", "{S}/images/a/img_001.png", "--classes", "dog"], None, "two names"),
    ("typo classify zero top", ["defend-typo", "classify", "{S}/images/a/img_001.png", "--classes", "dog,cat",
                                "--top", "0"], None, "--top"),
    ("typo two modes", ["defend-typo", "eval", "world", "--make-assets"], None, "exactly one"),
    ("typo eval missing folder", ["defend-typo", "eval", "{T}/nope", "--sae", "{S}/sae.safetensors"], None, None),
    ("typo attack missing images", ["defend-typo", "attack", "{T}/nope", "--word", "cat", "--out", "{T}/a"], None,
     "does not exist"),
    ("typo attack bad font size", ["defend-typo", "attack", "{S}/images", "--word", "cat", "--out", "{T}/a",
                                   "--font-size", "x"], None, "--font-size"),
    ("typo make-assets small discovery", ["defend-typo", "make-assets", "--out", "{T}/assets", "--n-discovery", "2"],
     None, "--n-discovery"),
    # ---- the root
    ("unknown global option", ["--bogus"], None, "--bogus"),
    ("unknown command", ["nope"], None, "nope"),
    ("misspelled command", ["trian", "--layer", "2"], None, "trian"),
]


# -- the check -----------------------------------------------------------------------------------------------------
def _snapshot(root):
    """Every file (content hash) and folder under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(autouse=True)
def _hub_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("SAEVIT_CONVERTED", str(tmp_path / "hf_home" / "converted"))
    yield
    while HELD:
        HELD.pop().__exit__(None, None, None)


def test_there_are_at_least_150_cases():
    assert len(CASES) >= 150 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, args, setup, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(shared, tmp_path, monkeypatch, name, args, setup, fragment):
    T = tmp_path / "case"
    T.mkdir()
    monkeypatch.chdir(T)
    if setup is not None:
        setup(T, shared)
    argv = [a.replace("{S}", str(shared)).replace("{T}", str(T)) for a in args]
    before, shared_before = _snapshot(tmp_path), _snapshot(shared)
    r = runner.invoke(app, argv)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    if fragment is not None:
        assert fragment in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # the user's files, next to and inside the outputs, byte-identical
    assert _snapshot(shared) == shared_before


# -- --overwrite replaces only the command's own files (acceptance 1) -------------------------------------------
def _run_ok(argv):
    r = runner.invoke(app, [str(a) for a in argv])
    assert r.exit_code == 0, r.output
    return r


def _users(T, *names):
    user_files(*names)(T, None)
    return {n: (T / n).read_bytes() for n in names}


def test_overwrite_keeps_user_files_export_world_train_pull(shared, tmp_path, monkeypatch):
    from tests.conftest import lay_out_hub_cache as lay_out_cache

    T = tmp_path
    # export: a previous export is replaced; files next to it stay
    _run_ok(["export", shared / "sae.safetensors", "--to", T / "exported"])
    kept = _users(T, "thesis.tex", "exported_notes/a.txt")
    _run_ok(["export", shared / "sae.safetensors", "--to", T / "exported", "--overwrite"])
    assert sorted(p.name for p in (T / "exported").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    # world export: written into a folder with the user's files, which stay byte-identical
    kept |= _users(T, "w/thesis.tex", "w/images/train/notes.txt")
    _run_ok(["world", "export", "--task", "shapes", "--out", T / "w", "--n", "2", "--overwrite"])
    assert (T / "w" / "metadata.csv").is_file()
    # train: the checkpoint replaced, its neighbours not
    kept |= _users(T, "saes/notes.txt")
    out = T / "saes" / "sae.safetensors"
    args = ["train", "--cache", shared / "cache", "--layer", "2", "--out", out, "--n-tokens", "256", "--device", "cpu",
            "--k", "4", "--expansion", "1"]
    _run_ok(args)
    _run_ok([*args, "--overwrite"])
    # pull --out: the pulled checkpoint is copied beside and over nothing of the user's
    monkeypatch.setenv("HF_HUB_CACHE", str(T / "hub"))
    lay_out_cache(T / "hub", "owner/repo", {"layer_2/all/sae.safetensors": (shared / "sae.safetensors").read_bytes()})
    kept |= _users(T, "pulled/README.md", "pulled/layer_2/notes.txt")
    _run_ok(["pull", "owner/repo", "--out", T / "pulled"])
    _run_ok(["pull", "owner/repo", "--out", T / "pulled", "--overwrite"])
    assert (T / "pulled" / "layer_2" / "all" / "sae.safetensors").read_bytes() == (shared / "sae.safetensors").read_bytes()
    for name, data in kept.items():
        assert (T / name).read_bytes() == data, name
