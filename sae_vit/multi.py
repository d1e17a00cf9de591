"""Many SAEs from one pass over an activation cache: layers x token types x settings.

Each shard is opened once per layer and pass; its tokens are split by token type, shuffled per stream
(``(layer, tokens)``) and the resulting batches fed to every SAE training on that stream, so N SAEs cost one
read of the cache instead of N (plus the counting, sampling and held-out loading that each single run repeats).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .dist import distributed
from .errors import SaeVitError
from .train import TrainConfig, Trainer, TrainState, init_sae, resolve

Key = tuple[int, str]
"""A stream: (layer, token type)."""


class Job(NamedTuple):
    """One SAE to train."""

    layer: int
    """0-based block of the cache to train on."""
    tokens: str
    """Token type: ``cls``, ``patches`` or ``all``."""
    config: TrainConfig
    """The recipe (``n_tokens`` is overridden by :func:`train_many`'s length arguments)."""
    out: Path
    """Where the checkpoint goes."""


def _read_selections(reader, layer: int, index: int, tokens: list[str], split: str) -> dict[str, Tensor]:
    """One shard of ``layer``, opened once, split into the selected tokens of each token type (float32)."""
    from safetensors import safe_open

    from .cache import shard_path

    path = shard_path(reader.root, layer, index)
    if not path.is_file():
        raise SaeVitError(f"Shard {path} is listed in the manifest but missing; re-run `saevit cache`.")
    with safe_open(str(path), framework="pt") as fh:
        token_index, image_index, acts = (fh.get_tensor(n) for n in ("token_index", "image_index", "acts"))
    return {t: acts[reader.mask(token_index, image_index, t, split)].float() for t in tokens}


def count_tokens(reader, keys: list[Key], split: str = "train") -> dict[Key, int]:
    """Tokens of every stream in ``split``, in one pass over the shards (one read per shard and layer)."""
    counts = dict.fromkeys(keys, 0)
    for layer in sorted({k[0] for k in keys}):
        types = [t for (lay, t) in keys if lay == layer]
        for shard in reader.manifest["shards"]:
            for t, part in _read_selections(reader, layer, shard["index"], types, split).items():
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
    shards = [s["index"] for s in reader.manifest["shards"]]
    while any(v > 0 for v in left.values()):
        order = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        for start in range(0, len(order), buffer_shards):
            active = [key for key, v in left.items() if v > 0]
            if not active:
                return
            parts: dict[Key, list[Tensor]] = {key: [carry[key]] for key in active}
            for layer in sorted({lay for lay, _ in active}):
                types = [t for lay, t in active if lay == layer]
                for index in order[start:start + buffer_shards]:
                    for t, part in _read_selections(reader, layer, index, types, split).items():
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


class _Feed:
    """Re-chunk one job's incoming batches to its per-rank batch size and keep this rank's slice."""

    def __init__(self, trainer: Trainer, rank: int, world: int):
        self.trainer, self.rank, self.world = trainer, rank, world
        self.local = max(1, trainer.cfg.batch_size // world)
        self.pending: list[Tensor] = []
        self.held = 0
        self.group: list[Tensor] = []

    def push(self, batch: Tensor) -> Iterator[Tensor]:
        self.pending.append(batch)
        self.held += len(batch)
        while self.held >= self.local:
            joined = torch.cat(self.pending)
            self.pending, self.held = [joined[self.local:]], self.held - self.local
            yield from self._grouped(joined[: self.local])

    def flush(self) -> Iterator[Tensor]:
        if self.held:
            yield from self._grouped(torch.cat(self.pending))
            self.pending, self.held = [], 0

    def _grouped(self, batch: Tensor) -> Iterator[Tensor]:
        self.group.append(batch)
        if len(self.group) == self.world:  # the same full groups on every rank: equal step counts
            yield self.group[self.rank]
            self.group = []


def train_many(
    cache_dir: str | os.PathLike,
    jobs: list[Job],
    n_tokens: int | None = None,
    epochs: float | None = None,
    overwrite: bool = False,
    progress: Callable[[int, TrainState], None] | None = None,
) -> list[tuple]:
    """Train every job's SAE from shared passes over the cache at ``cache_dir`` and save it (rank 0).

    Training length per job is chosen as :func:`sae_vit.api.train` chooses it (``n_tokens``, ``epochs`` of its
    stream, or 10 epochs but at least ``MIN_DEFAULT_TOKENS``). ``progress(job_index, state)`` reports each
    job. Under ``torchrun`` each rank trains on a disjoint slice of every stream with DistributedDataParallel
    and rank 0 evaluates and saves. Returns ``[(sae, path)]`` in the order of ``jobs``.
    """
    from .api import MIN_DEFAULT_TOKENS
    from .cache import CacheReader

    if not jobs:
        raise SaeVitError("Nothing to train; give at least one layer and token type.")
    reader = CacheReader(cache_dir)
    for job in jobs:
        reader.check(job.layer, job.tokens)
        if job.out.exists() and not overwrite:
            raise SaeVitError(f"{job.out} already exists; pass --overwrite to replace it or choose another --out.")
    keys = list(dict.fromkeys((job.layer, job.tokens) for job in jobs))
    n_train = count_tokens(reader, keys, "train")
    n_eval = count_tokens(reader, keys, "eval")
    for key in keys:
        if n_eval[key] == 0 or n_train[key] == 0:
            raise SaeVitError(
                f"The cache at {cache_dir} holds no {'held-out' if n_train[key] else 'training'} tokens for layer "
                f"{key[0]} / {key[1]} (every 20th image is held out); cache at least 20 images."
            )
    rank, world = distributed()
    site, d_in = reader.manifest["site"], reader.d_model
    trainers, feeds = [], []
    held_out: dict[Key, Tensor] = {}
    for job in jobs:
        key = (job.layer, job.tokens)
        length = n_tokens if n_tokens is not None else (
            int(epochs * n_train[key]) if epochs is not None else max(10 * n_train[key], MIN_DEFAULT_TOKENS))
        cfg = resolve(replace(job.config, n_tokens=length, batch_size=min(job.config.batch_size, n_train[key])),
                      d_in)
        if world > 1 and cfg.device.startswith("cuda") and "LOCAL_RANK" in os.environ:
            cfg = replace(cfg, device=f"cuda:{os.environ['LOCAL_RANK']}")
        init_acts = reader.sample(job.layer, job.tokens, 50_000, "train", seed=cfg.seed)
        extra = {"model": reader.manifest["model"], "layer": job.layer, "site": site, "tokens": job.tokens}
        trainer = Trainer(init_sae(d_in, cfg, init_acts, extra), cfg, world)
        trainers.append(trainer)
        feeds.append(_Feed(trainer, rank, world))
    by_key: dict[Key, list[int]] = {}
    for i, job in enumerate(jobs):
        by_key.setdefault((job.layer, job.tokens), []).append(i)
    budgets = {key: max(trainers[i].cfg.n_tokens for i in idx) for key, idx in by_key.items()}
    sizes = {key: max(trainers[i].cfg.batch_size for i in idx) for key, idx in by_key.items()}

    def feed(i: int, batches: Iterator[Tensor]) -> None:
        trainer = trainers[i]
        for x in batches:
            if trainer.done:
                return
            out = trainer.step(x[: -(-(trainer.cfg.n_tokens - trainer.tokens) // world)])
            if progress is not None and rank == 0 and (
                    trainer.step_count % trainer.cfg.log_every == 0 or trainer.step_count == trainer.n_steps):
                progress(i, trainer.state(out))

    seed = jobs[0].config.seed
    for key, batch in joint_batches(reader, budgets, sizes, "train", seed=seed):
        for i in by_key[key]:
            feed(i, feeds[i].push(batch))
    for i in range(len(jobs)):
        feed(i, feeds[i].flush())
    results = []
    for job, trainer in zip(jobs, trainers, strict=True):
        key = (job.layer, job.tokens)
        if rank == 0 and key not in held_out:
            held_out[key] = reader.load(job.layer, job.tokens, "eval", max_tokens=200_000, seed=trainer.cfg.seed)
        sae = trainer.finish(held_out.get(key))
        sae.cfg.training.update({"cache": str(cache_dir), "cache_weights": reader.manifest["weights"]})
        path = sae.save(job.out, overwrite=overwrite) if rank == 0 else job.out
        results.append((sae, path))
    return results
