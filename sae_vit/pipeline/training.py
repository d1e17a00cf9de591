"""Many SAEs from one pass over an activation cache: layers x token types x settings.

Each shard is opened once per layer and pass; its tokens are split by token type, shuffled per stream
(``(layer, tokens)``) and the resulting batches fed to every SAE training on that stream, so N SAEs cost one
read of the cache instead of N (plus the counting, sampling and held-out loading that each single run repeats).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from sae_vit.core.dist import distributed
from sae_vit.core.errors import SaeVitError
from sae_vit.core.kernels import Workspace
from sae_vit.core.train import TrainConfig, Trainer, TrainState, init_sae, recipe, resolve, training_length
from sae_vit.io.cache import CacheReader, Key, count_tokens, joint_batches
from sae_vit.pipeline.resume import cache_identity, deferred_interrupt, load_state, save_state, state_path


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


#: ``overwrite=REPLACE_STALE``: keep a finished checkpoint with the same recipe from the same cache, retrain any
#: other in its place (for intermediate files, such as ``defend-typo make-assets``'s work folder).
REPLACE_STALE = "stale"


def train_many(cache_dir: str | os.PathLike, jobs: list[Job], n_tokens: int | None = None,
               epochs: float | None = None, overwrite: bool | str = False,
               progress: Callable[[int, TrainState], None] | None = None, *,
               kept: Callable[[Path], None] | None = None, state_seconds: float = 60.0) -> list[tuple]:
    """Train every job's SAE from shared passes over the cache at ``cache_dir`` and save it (rank 0).

    Training length per job follows :func:`sae_vit.core.train.training_length` (``n_tokens``, ``epochs`` of its
    stream, or the default rule). ``progress(job_index, state)`` reports each job. Under ``torchrun`` each
    rank trains on a disjoint slice of every stream with DistributedDataParallel and rank 0 evaluates and
    saves. Returns ``[(sae, path)]`` in the order of ``jobs``.

    Nothing is lost: every destination is checked before the first step; a finished checkpoint with the same
    recipe from the same cache is kept (``kept(path)`` is told) and any other is refused unless ``overwrite``;
    each job's state is saved beside its checkpoint every ``state_seconds`` and on Ctrl-C
    (:mod:`sae_vit.pipeline.resume`), and a re-run with the same options resumes from it.
    ``overwrite=REPLACE_STALE`` retrains the other checkpoints instead of refusing them, resuming a saved state
    of the same recipe and cache (a state of any other run is dropped).
    """
    if not jobs:
        raise SaeVitError("Nothing to train; give at least one layer and token type.")
    overwrite = overwrite if overwrite == REPLACE_STALE else bool(overwrite)  # 1 or numpy's True mean True
    reader = CacheReader(cache_dir)
    for job in jobs:
        reader.check(job.layer, job.tokens)
        check_destination(job.out)
    keys = list(dict.fromkeys((job.layer, job.tokens) for job in jobs))
    n_train = _check_counts(reader, keys, cache_dir)
    rank, world = distributed()
    identity = cache_identity(reader.manifest)
    cfgs = [resolve(replace(job.config, n_tokens=training_length(n_train[(job.layer, job.tokens)], n_tokens, epochs),
                            batch_size=min(job.config.batch_size, n_train[(job.layer, job.tokens)])), reader.d_model)
            for job in jobs]
    done = {i: sae for i, sae in enumerate(_finished(jobs, cfgs, identity, overwrite)) if sae is not None}
    todo = [i for i in range(len(jobs)) if i not in done]
    workspace = Workspace()  # the trainers step one at a time: one pre-activation buffer serves them all
    trainers = {i: _trainer(reader, jobs[i], cfgs[i], world, identity, overwrite, workspace) for i in todo}
    _run(reader, jobs, trainers, rank, world, identity, progress, state_seconds)
    results, held_out = [], {}
    for i, job in enumerate(jobs):
        if i in done:
            if kept is not None and rank == 0:
                kept(job.out)
            results.append((done[i], job.out))
            continue
        key = (job.layer, job.tokens)
        if rank == 0 and key not in held_out:
            held_out[key] = reader.load(job.layer, job.tokens, "eval", max_tokens=200_000, seed=cfgs[i].seed)
        sae = trainers[i].finish(held_out.get(key))
        sae.cfg.training.update({"cache": str(cache_dir), "cache_weights": reader.manifest["weights"],
                                 "cache_id": identity})
        path = sae.save(job.out, overwrite=True) if rank == 0 else job.out
        if rank == 0:
            state_path(job.out).unlink(missing_ok=True)
        results.append((sae, path))
    return results


def check_destination(path: Path) -> None:
    """Refuse, before any work, a checkpoint path that could not be written at the end: a folder, or a place whose
    folder cannot be created or written. (An existing checkpoint is :func:`_finished`'s business.)"""
    if path.is_dir():
        raise SaeVitError(f"{path} is a folder; give --out a file path such as {path / 'sae.safetensors'}.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SaeVitError(f"Cannot write {path}: {parent} is a file, not a folder; choose another --out.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SaeVitError(f"Cannot write {path}: {parent} is not writable; choose another --out.")


def _check_counts(reader: CacheReader, keys: list[Key], cache_dir) -> dict[Key, int]:
    n_train = count_tokens(reader, keys, "train")
    n_eval = count_tokens(reader, keys, "eval")
    for key in keys:
        if n_eval[key] == 0 or n_train[key] == 0:
            raise SaeVitError(
                f"The cache at {cache_dir} holds no {'held-out' if n_train[key] else 'training'} tokens for layer "
                f"{key[0]} / {key[1]} (every 20th image is held out); cache at least 20 images."
            )
    return n_train


def _finished(jobs: list[Job], cfgs: list[TrainConfig], identity: str, overwrite: bool | str) -> list:
    """Per job, the existing checkpoint to keep (same recipe, same cache) or None to train; refuses any other
    existing checkpoint unless ``overwrite`` (``True``: keep none; :data:`REPLACE_STALE`: retrain the others)."""
    from sae_vit.core.sae import SAE

    found = []
    for job, cfg in zip(jobs, cfgs, strict=True):
        if overwrite is True or not job.out.exists():
            found.append(None)
            continue
        try:
            sae = SAE.load(job.out)
        except SaeVitError:
            sae = None
        t = sae.cfg.training if sae is not None else {}
        if t.get("recipe") != recipe(cfg) or t.get("cache_id") != identity:
            if overwrite == REPLACE_STALE:
                found.append(None)
                continue
            raise SaeVitError(f"{job.out} already exists (trained with other settings or on another cache); pass "
                              "--overwrite to replace it or choose another --out.")
        found.append(sae)
    return found


def _trainer(reader: CacheReader, job: Job, cfg: TrainConfig, world: int, identity: str, overwrite: bool | str,
             workspace: Workspace) -> Trainer:
    """A fresh trainer for ``job``, or the one saved beside its checkpoint by an interrupted run (with
    ``overwrite=True`` never; with :data:`REPLACE_STALE` when that run had the same recipe and cache)."""
    init_acts = reader.sample(job.layer, job.tokens, 50_000, "train", seed=cfg.seed)
    extra = {"model": reader.manifest["model"], "layer": job.layer, "site": reader.manifest["site"],
             "tokens": job.tokens}
    trainer = Trainer(init_sae(reader.d_model, cfg, init_acts, extra), cfg, world, workspace)
    saved = state_path(job.out)
    if saved.exists() and overwrite is True:
        saved.unlink()
    elif saved.exists():
        try:
            load_state(trainer, saved, identity)
        except SaeVitError:  # another recipe, cache or version: refused before anything was loaded
            if overwrite != REPLACE_STALE:
                raise
            saved.unlink()
    return trainer


def _run(reader: CacheReader, jobs: list[Job], trainers: dict[int, Trainer], rank: int, world: int, identity: str,
         progress: Callable | None, state_seconds: float) -> None:
    """Feed the cache's batches to every trainer, skipping the steps a resumed trainer already took, saving each
    trainer's state every ``state_seconds`` and when Ctrl-C is pressed."""
    if not trainers:
        return
    feeds = {i: _Feed(t, rank, world) for i, t in trainers.items()}
    skip = {i: t.step_count for i, t in trainers.items()}
    by_key: dict[Key, list[int]] = {}
    for i in trainers:
        by_key.setdefault((jobs[i].layer, jobs[i].tokens), []).append(i)
    budgets = {key: max(trainers[i].cfg.n_tokens for i in idx) for key, idx in by_key.items()}
    sizes = {key: max(trainers[i].cfg.batch_size for i in idx) for key, idx in by_key.items()}
    last_save = {i: time.monotonic() for i in trainers}

    def save(i: int) -> None:
        if rank == 0 and trainers[i].step_count > 0 and not trainers[i].done:
            save_state(trainers[i], state_path(jobs[i].out), identity)
        last_save[i] = time.monotonic()

    def feed(i: int, batches: Iterator[Tensor], interrupted: Callable[[], bool]) -> None:
        trainer = trainers[i]
        for x in batches:
            if skip[i]:  # taken before the run was interrupted: the same batches, in the same order
                skip[i] -= 1
                continue
            if trainer.done:
                return
            out = trainer.step(x[: -(-(trainer.cfg.n_tokens - trainer.tokens) // world)])
            if progress is not None and rank == 0 and (
                    trainer.step_count % trainer.cfg.log_every == 0 or trainer.step_count == trainer.n_steps):
                progress(i, trainer.state(out))
            if interrupted():
                for j in trainers:
                    save(j)
                raise KeyboardInterrupt
            if time.monotonic() - last_save[i] >= state_seconds:
                save(i)

    with deferred_interrupt() as interrupted:
        for key, batch in joint_batches(reader, budgets, sizes, "train", seed=jobs[0].config.seed):
            for i in by_key[key]:
                feed(i, feeds[i].push(batch), interrupted)
        for i in trainers:
            feed(i, feeds[i].flush(), interrupted)
