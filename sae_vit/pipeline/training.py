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

from sae_vit.core.dist import distributed
from sae_vit.core.errors import SaeVitError
from sae_vit.core.train import TrainConfig, Trainer, TrainState, init_sae, resolve, training_length
from sae_vit.io.cache import CacheReader, Key, count_tokens, joint_batches


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


def train_many(cache_dir: str | os.PathLike, jobs: list[Job], n_tokens: int | None = None,
               epochs: float | None = None, overwrite: bool = False,
               progress: Callable[[int, TrainState], None] | None = None) -> list[tuple]:
    """Train every job's SAE from shared passes over the cache at ``cache_dir`` and save it (rank 0).

    Training length per job follows :func:`sae_vit.core.train.training_length` (``n_tokens``, ``epochs`` of its
    stream, or the default rule). ``progress(job_index, state)`` reports each job. Under ``torchrun`` each
    rank trains on a disjoint slice of every stream with DistributedDataParallel and rank 0 evaluates and
    saves. Returns ``[(sae, path)]`` in the order of ``jobs``.
    """
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
        length = training_length(n_train[key], n_tokens, epochs)
        cfg = resolve(replace(job.config, n_tokens=length, batch_size=min(job.config.batch_size, n_train[key])),
                      d_in)
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
