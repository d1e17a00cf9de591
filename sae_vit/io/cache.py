"""The activation cache: a directory of sharded safetensors plus a manifest (see docs/formats.md).

Writing is resumable: shard files go to a temp name and are renamed, then the manifest is rewritten
atomically, so the manifest never counts a shard the disk lacks. A folder being written is locked (``filelock``),
so a second writer is refused instead of reverting the first one's manifest. Reading is memory-mapped
(safetensors) with a shuffle buffer across shards, so a cache larger than RAM trains without being loaded whole.
Every manifest is checked against a schema when read, and :meth:`CacheReader.verify` checks every shard's header
against it (training refuses an unfinished or inconsistent cache).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sae_vit.core.atomic import atomic_write, file_mode, write_json
from sae_vit.core.backbone import SITES, TOKENS, Backbone, check_choice
from sae_vit.core.dist import barrier, distributed
from sae_vit.core.errors import SaeVitError
from sae_vit.io.images import ImageDataset, ImageSource, collate_skip_unreadable

CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The dtype names safetensors headers use for :data:`DTYPES`.
_HEADER_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
#: Held while a cache folder is written; the sidecar names the writer (pid, host, start time).
LOCK = ".saevit.lock"
LOCK_OWNER = ".saevit.lock.json"
#: Every file a cache consists of (relative paths): what ``--overwrite`` may remove, and nothing else.
_OWN_FILE = re.compile(r"(manifest\.json|manifest\.rank\d+\.json|\.saevit\.lock(\.json)?"
                       r"|\.manifest(\.rank\d+)?\.json\.[^/]*\.tmp|layer_\d+/shard_\d{5}\.safetensors"
                       r"|layer_\d+/\.shard_\d{5}\.safetensors\.[^/]*\.tmp)")
_OWN_DIR = re.compile(r"layer_\d+")
PRECISIONS = ("fp32", "bf16")
#: Held-out images: every image whose index is ``EVAL_EVERY - 1`` modulo ``EVAL_EVERY`` (5 %), split by
#: image so no token of an evaluation image is trained on.
EVAL_EVERY = 20


write_json_atomic = write_json  # the name the benchmarks import


def _save_shard(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                              metadata=metadata))


def _shard_metadata(manifest: dict, layer: int, index: int) -> dict[str, str]:
    """What a shard records about itself, so a shard copied from another cache is recognised."""
    return {"layer": str(layer), "index": str(index), "site": manifest["site"], "dtype": manifest["dtype"],
            "source": str(manifest.get("source", {}).get("fingerprint", ""))}


def shard_path(root: Path, layer: int, index: int) -> Path:
    return root / f"layer_{layer}" / f"shard_{index:05d}.safetensors"


@dataclass
class CacheProgress:
    """Reported after each batch: images done (of total) and images skipped as unreadable."""

    done: int
    total: int
    skipped: int


def write_cache(backbone: Backbone, source: ImageSource, out: str | os.PathLike, layers: list[int],
                site: str = "resid_post", tokens: str = "all", dtype: str = "float16", batch_size: int = 64,
                images_per_shard: int = 1024, num_workers: int = 0, max_images: int | None = None,
                overwrite: bool = False, progress: Callable[[CacheProgress], None] | None = None,
                stop_after_shards: int | None = None, precision: str = "fp32") -> dict:
    """Run ``backbone`` over ``source`` and store activations of ``layers`` at ``site`` for ``tokens``.

    Returns the final manifest. If ``out`` holds an unfinished cache with the same settings, it resumes;
    a finished one or different settings need ``overwrite``. ``stop_after_shards`` stops early (for tests
    of resumption). ``precision`` ``bf16`` runs the forward pass under bf16 autocast.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) rank r caches the shards whose index is r modulo the world size
    and records them in ``manifest.rank{r}.json``; rank 0 merges those into the manifest at the end (and
    at the start of a resumed run), so the result equals a single-process run.
    """
    layers = _check_request(backbone, layers, tokens, dtype, precision)
    items = list(source.items[:max_images] if max_images else source.items)
    root = Path(out)
    rank, world = distributed()
    settings = _settings(backbone, source, items, layers, site, tokens, dtype, images_per_shard)
    if root.exists() and not root.is_dir():
        raise SaeVitError(f"{root} is a file, not a folder; choose another --out.")
    if rank == 0 and root.is_dir():
        _refuse_foreign(root)  # before the lock file is made: a user's folder is left exactly as it was
    with cache_lock(root) if rank == 0 else _no_lock():
        return _write_locked(backbone, root, items, settings, overwrite, rank, world, progress, stop_after_shards,
                             precision, batch_size, num_workers)


@contextmanager
def _no_lock():
    yield


def _write_locked(backbone, root, items, settings, overwrite, rank, world, progress, stop_after_shards, precision,
                  batch_size, num_workers) -> dict:
    """:func:`write_cache` once rank 0 holds the folder's lock."""
    layers, site, tokens = settings["layers"], settings["site"], settings["tokens"]
    dtype, images_per_shard = settings["dtype"], settings["images_per_shard"]
    if rank == 0:
        manifest = _start_or_resume(root, settings, overwrite)
        if world > 1:
            _merge_rank_manifests(root, manifest)
    barrier(world)
    if rank != 0:
        manifest = read_manifest(root)
    token_ids = backbone.token_ids(tokens)
    n_shards = -(-len(items) // images_per_shard)
    done = {s["index"] for s in manifest["shards"]}
    mine: list[dict] = []
    for index in [i for i in range(n_shards) if i not in done and i % world == rank][:stop_after_shards]:
        lo, hi = index * images_per_shard, min(len(items), (index + 1) * images_per_shard)
        shard = _cache_shard(backbone, items[lo:hi], lo, layers, site, tokens, token_ids, DTYPES[dtype],
                             batch_size, num_workers, manifest, progress if rank == 0 else None, len(items),
                             bf16=precision == "bf16")
        for layer in layers:
            _save_shard(shard_path(root, layer, index), shard["tensors"][layer], _shard_metadata(manifest, layer, index))
        # Only after every layer's file is on disk is the shard recorded.
        mine.append(shard["entry"])
        if world > 1:
            write_json(root / f"manifest.rank{rank}.json", {"shards": mine})
        else:
            _add_shards(root, manifest, [shard["entry"]])
    barrier(world)
    if rank == 0:
        if world > 1:
            _merge_rank_manifests(root, manifest)
        manifest["complete"] = len(manifest["shards"]) == n_shards
        _refresh_totals(manifest)
        write_json(root / MANIFEST, manifest)
    barrier(world)
    return read_manifest(root) if rank != 0 else manifest


def _check_request(backbone: Backbone, layers: list[int], tokens: str, dtype: str, precision: str) -> list[int]:
    """The requested layers, sorted and checked, after checking the other options; one clear error otherwise."""
    check_choice(precision, PRECISIONS, "--precision")
    check_choice(tokens, TOKENS, "token selection")
    check_choice(dtype, tuple(DTYPES), "--dtype")
    layers = sorted(set(layers))
    if not layers:
        raise SaeVitError("No layers requested; pass --layers, e.g. --layers 4,8.")
    for layer in layers:
        backbone.check_layer(layer)
    return layers


def _settings(backbone: Backbone, source: ImageSource, items: list, layers: list[int], site: str, tokens: str,
              dtype: str, images_per_shard: int) -> dict:
    """What a cache records about how it was made; a resumed run must match it."""
    return {"format_version": CACHE_FORMAT_VERSION, "model": backbone.name, "weights": backbone.weights_id,
            "layers": layers, "site": site, "tokens": tokens, "dtype": dtype,
            "d_model": backbone.d_site(site), "has_cls": backbone.has_cls, "n_patches": backbone.n_patches,
            "tokens_per_image": len(backbone.token_positions(tokens)), "images_per_shard": images_per_shard,
            "n_images": len(items), "source": {**source.describe(), "n_images": len(items)}}


def _add_shards(root: Path, manifest: dict, entries: list[dict]) -> None:
    """Add the shard entries whose index the manifest lacks (the first of an index wins), keep the shards in index
    order, and write the manifest."""
    by_index = {e["index"]: e for e in [*entries[::-1], *manifest["shards"]]}
    manifest["shards"] = sorted(by_index.values(), key=lambda s: s["index"])
    _refresh_totals(manifest)
    write_json(root / MANIFEST, manifest)


def _merge_rank_manifests(root: Path, manifest: dict) -> None:
    """Fold the shards recorded by each rank into the manifest, write it, then remove the rank files."""
    partials = sorted(root.glob("manifest.rank*.json"))
    _add_shards(root, manifest, [e for path in partials for e in json.loads(path.read_text())["shards"]])
    for path in partials:
        path.unlink()


@contextmanager
def cache_lock(root: str | os.PathLike):
    """Hold ``root``'s write lock (creating the folder): a second writer gets one line naming the first."""
    from filelock import FileLock, Timeout

    root = Path(root)
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaeVitError(f"Cannot create the cache folder {root} ({exc.strerror}); choose another --out.") from exc
    lock = FileLock(root / LOCK, timeout=0, mode=file_mode())  # the umask's permissions, as every file we write
    try:
        lock.acquire()
    except Timeout:
        raise SaeVitError(f"{root} is being written by {_lock_owner(root)}; wait for it to finish, or choose another "
                          "--out.") from None
    except OSError as exc:
        raise SaeVitError(f"Cannot write to the cache folder {root} ({exc.strerror}); choose another --out.") from exc
    try:
        write_json(root / LOCK_OWNER, {"pid": os.getpid(), "host": socket.gethostname(),
                                       "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        yield
    finally:
        (root / LOCK_OWNER).unlink(missing_ok=True)
        lock.release()  # the lock file of a cache stays: deleting it could let two writers lock two different files
        if not (root / MANIFEST).exists():  # refused before anything was written: leave nothing behind
            (root / LOCK).unlink(missing_ok=True)
            if created and not any(root.iterdir()):
                root.rmdir()


def _lock_owner(root: Path) -> str:
    """The writer named in the lock's sidecar, as words."""
    try:
        owner = json.loads((root / LOCK_OWNER).read_text())
        return f"another `saevit cache` (pid {owner['pid']} on {owner['host']}, started {owner['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another `saevit cache`"


def foreign_files(root: str | os.PathLike) -> list[Path]:
    """Everything under ``root`` that is not part of a cache (user files that ``--overwrite`` must not touch)."""
    root = Path(root)
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() and not p.is_symlink():
            if not _OWN_DIR.fullmatch(rel) and not any(p.iterdir()):
                found.append(p)  # an empty folder of the user's (a non-empty one shows through its files)
        elif not _OWN_FILE.fullmatch(rel):
            found.append(p)
    return found


def _refuse_foreign(root: Path) -> None:
    """Refuse a folder holding anything a cache does not consist of, naming the first such file."""
    foreign = foreign_files(root) if root.exists() else []
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise SaeVitError(f"{root} is not empty: it holds {foreign[0]}{more}, which sae-vit did not write; choose "
                          "another --out (--overwrite only ever replaces a cache's own files).")


def _start_or_resume(root: Path, settings: dict, overwrite: bool) -> dict:
    path = root / MANIFEST
    _refuse_foreign(root)
    if path.exists() and not overwrite:
        old = read_manifest(root)
        same = all(old.get(k) == v for k, v in settings.items())
        if old.get("complete"):
            raise SaeVitError(f"{root} already holds a finished cache; pass --overwrite to replace it or "
                              "choose another --out.")
        if not same:
            raise SaeVitError(f"{root} holds an unfinished cache with other settings; pass --overwrite to "
                              "start again or use the same options to resume.")
        return old
    if overwrite and root.exists():
        _remove_cache(root)
    for layer in settings["layers"]:
        (root / f"layer_{layer}").mkdir(parents=True, exist_ok=True)
    manifest = {**settings, "complete": False, "shards": [], "n_tokens": 0, "n_images_cached": 0, "mean_norm": {}, "skipped": []}
    write_json(path, manifest)
    return manifest


def _remove_cache(root: Path) -> None:
    """Delete a cache's own files (:data:`_OWN_FILE`: the manifests and shards, not the lock being held) and its
    emptied layer folders; never anything else in the folder."""
    for p in sorted(root.rglob("*"), reverse=True):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and _OWN_FILE.fullmatch(rel) and not rel.startswith(LOCK):
            p.unlink()
        elif p.is_dir() and _OWN_DIR.fullmatch(rel) and not any(p.iterdir()):
            p.rmdir()


@torch.no_grad()
def _cache_shard(backbone, items, offset, layers, site, tokens, token_ids, dtype, batch_size, num_workers,
                 manifest, progress, total, bf16: bool = False) -> dict:
    loader = torch.utils.data.DataLoader(
        ImageDataset(items, backbone.transform, offset=offset), batch_size=batch_size,
        num_workers=num_workers, collate_fn=collate_skip_unreadable,
    )
    acts: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    image_index: list[Tensor] = []
    norm_sum = {layer: 0.0 for layer in layers}
    skipped: dict[int, str] = {}
    n_images = 0
    for indices, batch, bad in loader:
        skipped.update(bad)
        if batch is not None:
            # Only the forward pass runs under autocast: storing (cat to float16) must not.
            with torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = backbone.capture(batch.to(backbone.device), layers, site, tokens)
            for layer in layers:
                a = out[layer].float().cpu()  # [B, T, d]
                norm_sum[layer] += a.norm(dim=-1).sum().item()
                acts[layer].append(a.reshape(-1, a.shape[-1]).to(dtype))
            image_index.append(torch.tensor(indices).repeat_interleave(len(token_ids)))
            n_images += len(indices)
        if progress:
            done = sum(s["n_images"] + len(s["skipped"]) for s in manifest["shards"]) + n_images + len(skipped)
            progress(CacheProgress(done, total, len(manifest["skipped"]) + len(skipped)))
    n_tokens = n_images * len(token_ids)
    d = backbone.d_site(site)
    img = torch.cat(image_index) if image_index else torch.zeros(0, dtype=torch.long)
    tok = token_ids.repeat(n_images)
    tensors = {
        layer: {
            "acts": torch.cat(acts[layer]) if acts[layer] else torch.zeros(0, d, dtype=dtype),
            "image_index": img.to(torch.int64),
            "token_index": tok.to(torch.int64),
        }
        for layer in layers
    }
    entry = {"index": offset // manifest["images_per_shard"], "n_images": n_images, "n_tokens": n_tokens,
             "norm_sum": {str(k): v for k, v in norm_sum.items()},
             "skipped": [items[i - offset].id for i in skipped],
             "skip_reasons": {items[i - offset].id: reason for i, reason in skipped.items()}}
    return {"tensors": tensors, "entry": entry}


def _refresh_totals(manifest: dict) -> None:
    shards = manifest["shards"]
    manifest["n_tokens"] = sum(s["n_tokens"] for s in shards)
    manifest["n_images_cached"] = sum(s["n_images"] for s in shards)
    manifest["skipped"] = [sid for s in shards for sid in s["skipped"]]
    manifest["skip_reasons"] = {sid: r for s in shards for sid, r in s.get("skip_reasons", {}).items()}
    n = manifest["n_tokens"]
    manifest["mean_norm"] = {
        str(layer): (sum(s["norm_sum"][str(layer)] for s in shards) / n if n else 0.0) for layer in manifest["layers"]
    }


def read_manifest(root: str | os.PathLike) -> dict:
    """Read and check a cache's manifest (:func:`check_manifest`); a missing, foreign or damaged one is a one-line
    :class:`SaeVitError`."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise SaeVitError(f"{root} is not an activation cache (no {MANIFEST}); create one with `saevit cache`.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaeVitError(f"{path} is corrupted (not JSON); re-run `saevit cache --overwrite`.") from exc
    except OSError as exc:
        raise SaeVitError(f"Cannot read {path} ({exc.strerror}); check its permissions.") from exc
    if not isinstance(manifest, dict):
        raise SaeVitError(f"{path} is not a cache manifest (not a JSON object); re-run `saevit cache --overwrite`.")
    if manifest.get("format_version") != CACHE_FORMAT_VERSION:
        raise SaeVitError(
            f"{root} uses cache format {manifest.get('format_version')!r}, this sae-vit reads "
            f"{CACHE_FORMAT_VERSION}; re-create it with `saevit cache --overwrite`."
        )
    problem = check_manifest(manifest)
    if problem:
        raise SaeVitError(f"{path} is damaged ({problem}); re-create the cache with `saevit cache --overwrite`.")
    return manifest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


#: The manifest's fields: name -> (check, what it must be). Rank files and extra fields are not checked.
_MANIFEST_SCHEMA: dict[str, tuple[Callable, str]] = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "weights": (lambda v: isinstance(v, str), "a string"),
    "layers": (lambda v: isinstance(v, list) and v and all(_is_int(x) and x >= 0 for x in v)
               and len(set(v)) == len(v), "a non-empty list of distinct block indices"),
    "site": (lambda v: isinstance(v, str) and v in SITES, f"one of {', '.join(SITES)}"),
    "tokens": (lambda v: isinstance(v, str) and v in TOKENS, f"one of {', '.join(TOKENS)}"),
    "dtype": (lambda v: isinstance(v, str) and v in DTYPES, f"one of {', '.join(DTYPES)}"),
    "d_model": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "images_per_shard": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "n_images": (lambda v: _is_int(v) and v >= 0, "a count"),
    "complete": (lambda v: isinstance(v, bool), "true or false"),
    "source": (lambda v: isinstance(v, dict), "an object"),
    "shards": (lambda v: isinstance(v, list), "a list"),
    "n_tokens": (lambda v: _is_int(v) and v >= 0, "a count"),
    "n_images_cached": (lambda v: _is_int(v) and v >= 0, "a count"),
    "skipped": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of image ids"),
}
_SHARD_SCHEMA: dict[str, tuple[Callable, str]] = {
    "index": (lambda v: _is_int(v) and v >= 0, "a shard index"),
    "n_images": (lambda v: _is_int(v) and v >= 0, "a count"),
    "n_tokens": (lambda v: _is_int(v) and v >= 0, "a count"),
    "norm_sum": (lambda v: isinstance(v, dict) and all(_is_num(x) for x in v.values()), "numbers by layer"),
    "skipped": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of image ids"),
}


def check_manifest(manifest: dict) -> str | None:
    """What is wrong with a manifest's fields (a phrase), or None when it is well formed."""
    for schema, where, entries in ((_MANIFEST_SCHEMA, "", [manifest]),
                                   (_SHARD_SCHEMA, "a shard's ", manifest.get("shards") or [])):
        for entry in entries:
            if not isinstance(entry, dict):
                return f"{where or 'the manifest '}entry is not an object"
            for key, (ok, what) in schema.items():
                if key not in entry:
                    return f"{where}'{key}' is missing"
                if not ok(entry[key]):
                    return f"{where}'{key}' is {entry[key]!r}, not {what}"
    indices = [s["index"] for s in manifest["shards"]]
    n_shards = -(-manifest["n_images"] // manifest["images_per_shard"])
    if len(set(indices)) != len(indices) or any(i >= n_shards for i in indices):
        return f"shard indices {indices} do not fit {n_shards} shards"
    for s in manifest["shards"]:
        if set(s["norm_sum"]) != {str(layer) for layer in manifest["layers"]}:
            return f"shard {s['index']} has norms for layers {sorted(s['norm_sum'])}, not {manifest['layers']}"
        if s["n_images"] + len(s["skipped"]) > manifest["images_per_shard"]:
            return f"shard {s['index']} counts more images than a shard holds"
    if manifest["complete"] and len(indices) != n_shards:
        return f"it says complete but lists {len(indices)} of {n_shards} shards"
    return None


class CacheReader:
    """Read a cache directory: token selection, held-out split, and shuffled memory-mapped batches."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if not self.manifest["shards"]:
            raise SaeVitError(f"{self.root} holds no finished shard yet; run or resume `saevit cache`.")

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def d_model(self) -> int:
        return self.manifest["d_model"]

    def check(self, layer: int, tokens: str) -> None:
        """Raise a clear error unless the cache holds ``layer`` and can serve ``tokens``."""
        check_choice(tokens, TOKENS, "token selection")
        if layer not in self.layers:
            raise SaeVitError(
                f"The cache at {self.root} has no layer {layer} (it holds {self.layers}); re-run `saevit cache` "
                f"with --layers including {layer}."
            )
        stored = self.manifest["tokens"]
        if stored != "all" and stored != tokens:
            raise SaeVitError(
                f"The cache at {self.root} stored --tokens {stored}, which cannot serve --tokens {tokens}; "
                "re-run `saevit cache --tokens all`."
            )

    def mask(self, token_index: Tensor, image_index: Tensor, tokens: str, split: str) -> Tensor:
        """Which stored tokens belong to the selection ``tokens`` (cls / patches / all) and ``split``
        (train / eval / all: eval = every image whose index is 19 modulo 20)."""
        if tokens == "cls":
            keep = token_index == 0
        elif tokens == "patches":
            keep = token_index >= 1
        else:
            keep = torch.ones_like(token_index, dtype=torch.bool)
        held_out = image_index % EVAL_EVERY == EVAL_EVERY - 1
        if split == "train":
            keep &= ~held_out
        elif split == "eval":
            keep &= held_out
        return keep

    def _shard(self, layer: int, index: int) -> Path:
        path = shard_path(self.root, layer, index)
        if not path.is_file():
            raise SaeVitError(f"Shard {path} is listed in the manifest but missing; re-run `saevit cache`.")
        return path

    @contextmanager
    def _open(self, layer: int, index: int):
        """A shard opened with safetensors; a damaged file is a one-line :class:`SaeVitError`."""
        from safetensors import SafetensorError, safe_open

        path = self._shard(layer, index)
        try:
            with safe_open(str(path), framework="pt") as fh:
                yield fh
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise SaeVitError(f"Shard {path} is damaged ({_first_line(exc)}); re-create the cache with "
                              "`saevit cache --overwrite`.") from exc

    def verify(self, layers: list[int] | None = None, allow_incomplete: bool = False) -> None:
        """Refuse an unfinished cache (unless ``allow_incomplete``) and any shard of ``layers`` (default: all) whose
        header disagrees with the manifest: tensors, dtype, rows, width, or the layer, site and image source it
        records. Reads headers only."""
        m = self.manifest
        n_shards = -(-m["n_images"] // m["images_per_shard"])
        if not m["complete"] and not allow_incomplete:
            raise SaeVitError(f"The cache at {self.root} is unfinished ({len(m['shards'])} of {n_shards} shards); "
                              "finish it by re-running the same `saevit cache` command, or pass --allow-incomplete "
                              "to use what it holds.")
        fingerprint = str(m["source"].get("fingerprint", ""))
        for layer in self.layers if layers is None else layers:
            for entry in m["shards"]:
                with self._open(layer, entry["index"]) as fh:
                    problem = _shard_problem(fh, m, layer, entry, fingerprint)
                if problem:
                    raise SaeVitError(f"Shard {shard_path(self.root, layer, entry['index'])} does not match the "
                                      f"cache's manifest ({problem}); re-create the cache with `saevit cache "
                                      "--overwrite`.")

    def read_shard(self, layer: int, index: int, tokens: str = "all", split: str = "all") -> Tensor:
        """Selected activations of one shard as float32 [n, d] (memory-mapped read)."""
        return self._select(layer, index, [tokens], split)[tokens]

    def _select(self, layer: int, index: int, tokens: list[str], split: str) -> dict[str, Tensor]:
        """One shard of ``layer``, opened once, split into the selected tokens of each type (float32)."""
        with self._open(layer, index) as fh:
            token_index, image_index = fh.get_tensor("token_index"), fh.get_tensor("image_index")
            acts = fh.get_tensor("acts")
        if not (acts.ndim == 2 and acts.shape[1] == self.d_model and len(acts) == len(token_index) == len(image_index)):
            raise SaeVitError(f"Shard {shard_path(self.root, layer, index)} holds acts {tuple(acts.shape)} with "
                              f"{len(token_index)} token and {len(image_index)} image indices, not [n, {self.d_model}] "
                              "with n of each; re-create the cache with `saevit cache --overwrite`.")
        return {t: acts[self.mask(token_index, image_index, t, split)].float() for t in tokens}

    def count(self, layer: int, tokens: str, split: str = "train") -> int:
        """Number of tokens the selection holds."""
        self.check(layer, tokens)
        total = 0
        for s in self.manifest["shards"]:  # the small index tensors only, never the activations
            with self._open(layer, s["index"]) as fh:
                total += int(self.mask(fh.get_tensor("token_index"), fh.get_tensor("image_index"), tokens, split).sum())
        return total

    def load(self, layer: int, tokens: str, split: str = "eval", max_tokens: int | None = None,
             seed: int = 0) -> Tensor:
        """Selected tokens of ``split`` (``train``, ``eval`` or ``all``): all of them, or ``max_tokens`` drawn
        from shards read in a random order (reading stops once enough are held, so memory stays bounded)."""
        self.check(layer, tokens)
        if max_tokens is None:
            return self._read(layer, tokens, split, [s["index"] for s in self.manifest["shards"]])
        g = torch.Generator().manual_seed(seed)
        x = self._read(layer, tokens, split, self._order(g), 2 * max_tokens, trim=g)
        return x[torch.randperm(len(x), generator=g)[:max_tokens]] if len(x) > max_tokens else x

    def sample(self, layer: int, tokens: str, n: int, split: str = "train", seed: int = 0) -> Tensor:
        """About ``n`` selected tokens from randomly chosen shards (for initialisation), without reading all."""
        self.check(layer, tokens)
        g = torch.Generator().manual_seed(seed)
        x = self._read(layer, tokens, split, self._order(g), n)
        return x[torch.randperm(len(x), generator=g)[:n]]

    def _order(self, g: torch.Generator) -> list[int]:
        """The shards' indices in a random order drawn from ``g``."""
        shards = [s["index"] for s in self.manifest["shards"]]
        return [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]

    def _read(self, layer: int, tokens: str, split: str, order: list[int], n: int | None = None,
              trim: torch.Generator | None = None) -> Tensor:
        """Selected tokens of the shards in ``order`` until ``n`` are held (all when None); with ``trim``, the
        last shard read is subsampled (drawing from it) so that exactly ``n`` are held."""
        parts, have = [], 0
        for index in order:
            part = self.read_shard(layer, index, tokens, split)
            if trim is not None and have + len(part) > n:
                part = part[torch.randperm(len(part), generator=trim)[: n - have]]
            parts.append(part)
            have += len(part)
            if n is not None and have >= n:
                break
        return torch.cat(parts) if parts else torch.zeros(0, self.d_model)

    def batches(self, layer: int, tokens: str, batch_size: int, split: str = "train", seed: int = 0,
                buffer_shards: int = 4, epochs: float | None = 1.0) -> Iterator[Tensor]:
        """Shuffled float32 batches [batch_size, d]: shards in random order, ``buffer_shards`` at a time,
        shuffled together. Runs ``epochs`` passes (fractional allowed) or forever if ``None``."""
        self.check(layer, tokens)
        g = torch.Generator().manual_seed(seed)
        total = self.count(layer, tokens, split)
        if total == 0:
            raise SaeVitError(f"The cache at {self.root} has no {split} tokens for --tokens {tokens}; "
                              "cache more images.")
        budget = None if epochs is None else int(epochs * total)
        carry = torch.zeros(0, self.d_model)
        while budget is None or budget > 0:
            order = self._order(g)
            for start in range(0, len(order), buffer_shards):
                parts = [carry] + [self.read_shard(layer, i, tokens, split) for i in order[start:start + buffer_shards]]
                buf = torch.cat(parts)
                buf = buf[torch.randperm(len(buf), generator=g)]
                n_full = len(buf) // batch_size
                for b in range(n_full):
                    batch = buf[b * batch_size:(b + 1) * batch_size]
                    if budget is not None:
                        if budget <= 0:
                            return
                        batch = batch[:budget]
                        budget -= len(batch)
                    yield batch
                carry = buf[n_full * batch_size:]
            if budget is not None and budget > 0 and len(carry) and budget < batch_size:
                yield carry[:budget]
                return


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _shard_problem(fh, manifest: dict, layer: int, entry: dict, fingerprint: str) -> str | None:
    """How an open shard's header disagrees with its manifest entry (a phrase), or None."""
    names = set(fh.keys())
    if not {"acts", "image_index", "token_index"} <= names:
        return f"tensors {sorted(names)}, not acts, image_index and token_index"
    acts = fh.get_slice("acts")
    want = _HEADER_DTYPES[manifest["dtype"]]
    if acts.get_dtype() != want:
        return f"acts are {acts.get_dtype()}, the manifest says {manifest['dtype']}"
    rows = entry["n_tokens"]
    if list(acts.get_shape()) != [rows, manifest["d_model"]]:
        return f"acts {acts.get_shape()}, expected [{rows}, {manifest['d_model']}]"
    for name in ("image_index", "token_index"):
        if list(fh.get_slice(name).get_shape()) != [rows]:
            return f"{name} {fh.get_slice(name).get_shape()}, expected [{rows}]"
    meta = fh.metadata() or {}
    recorded = {"layer": str(layer), "site": manifest["site"], "source": fingerprint}
    for key, value in recorded.items():
        if key in meta and meta[key] != value:  # shards written before this check record nothing: accepted
            return f"it records {key} {meta[key]!r}, the cache {value!r}"
    return None


Key = tuple[int, str]
"""A stream: (layer, token type)."""


def count_tokens(reader, keys: list[Key], split: str = "train") -> dict[Key, int]:
    """Tokens of every stream in ``split``, in one pass over the shards (one read per shard and layer)."""
    counts = dict.fromkeys(keys, 0)
    for layer in sorted({k[0] for k in keys}):
        types = [t for (lay, t) in keys if lay == layer]
        for shard in reader.manifest["shards"]:
            for t, part in reader._select(layer, shard["index"], types, split).items():
                counts[(layer, t)] += len(part)
    return counts


def joint_batches(reader, budgets: dict[Key, int], batch_size: dict[Key, int], split: str = "train",
                  seed: int = 0, buffer_shards: int = 4) -> Iterator[tuple[Key, Tensor]]:
    """Shuffled ``(stream, batch)`` pairs for several streams from shared passes over the cache.

    Shards come in one random order per pass, ``buffer_shards`` at a time; each stream's tokens from them are
    shuffled together (as :meth:`CacheReader.batches` does for one stream) and cut into ``batch_size[key]``
    batches until the stream has yielded ``budgets[key]`` tokens; passes repeat while any stream wants more,
    and a stream that is done is no longer read. Memory: ``buffer_shards`` shards per stream.
    """
    g = torch.Generator().manual_seed(seed)
    gens = {key: torch.Generator().manual_seed(seed + 1 + i) for i, key in enumerate(sorted(budgets))}
    left = dict(budgets)
    carry: dict[Key, Tensor] = {key: torch.zeros(0, reader.d_model) for key in budgets}
    while any(v > 0 for v in left.values()):
        order = reader._order(g)
        for start in range(0, len(order), buffer_shards):
            active = [key for key, v in left.items() if v > 0]
            if not active:
                return
            parts: dict[Key, list[Tensor]] = {key: [carry[key]] for key in active}
            for layer in sorted({lay for lay, _ in active}):
                types = [t for lay, t in active if lay == layer]
                for index in order[start:start + buffer_shards]:
                    for t, part in reader._select(layer, index, types, split).items():
                        parts[(layer, t)].append(part)
            for key in active:
                buf = torch.cat(parts[key])
                buf = buf[torch.randperm(len(buf), generator=gens[key])]
                bs = batch_size[key]
                n_full = len(buf) // bs
                for b in range(n_full):
                    if left[key] <= 0:
                        break
                    batch = buf[b * bs:(b + 1) * bs][: left[key]]
                    left[key] -= len(batch)
                    yield key, batch
                carry[key] = buf[n_full * bs:]
        for key in list(left):  # the stream is smaller than one batch: hand out the rest
            if 0 < left[key] < batch_size[key] and len(carry[key]) >= left[key]:
                yield key, carry[key][: left[key]]
                left[key] = 0
