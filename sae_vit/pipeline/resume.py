"""Resumable training: a :class:`~sae_vit.core.train.Trainer`'s whole state in one file beside the checkpoint.

The state file ``<checkpoint>.train-state.safetensors`` holds the SAE's weights, the AdamW moments, the dead-latent
clocks and, in its JSON metadata, the step and token counters, the schedule's position, the optimiser's parameter
groups, the resolved recipe and the identity of the cache. It is written atomically every ``state_seconds`` of
training (and when the run is interrupted between two steps), and removed once the checkpoint is saved. A re-run
with the same recipe on the same cache loads it and skips the batches already trained on, so the result equals an
uninterrupted run; other settings are refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from sae_vit.core.errors import SaeVitError
from sae_vit.core.train import Trainer, recipe

STATE_SUFFIX = ".train-state.safetensors"
#: The layout of the state file: 2 since a TopK encoder trains as one [d_sae, d_in + 1] tensor (bias included).
STATE_FORMAT = 2


def state_path(out: Path) -> Path:
    """Where the training state of the checkpoint ``out`` is kept."""
    return out.with_name(out.name + STATE_SUFFIX)


def cache_identity(manifest: dict) -> str:
    """A short hash of a cache's manifest (its settings, source fingerprint and shards): equal for the same data."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(trainer: Trainer, path: Path, identity: str) -> Path:
    """Write ``trainer``'s state to ``path`` atomically."""
    from safetensors.torch import save_file

    from sae_vit.core.atomic import atomic_write

    tensors = {f"sae.{name}": t.detach().contiguous().cpu() for name, t in trainer.sae.state_dict().items()}
    tensors["since_fired"] = trainer.since_fired.cpu()
    opt = trainer.opt.state_dict()
    for index, slots in opt["state"].items():
        for slot, value in slots.items():
            tensors[f"opt.{index}.{slot}"] = torch.as_tensor(value).detach().contiguous().cpu()
    meta = {"format": STATE_FORMAT, "step": trainer.step_count, "tokens": trainer.tokens, "recipe": recipe(trainer.cfg), "cache": identity,
            "param_groups": opt["param_groups"], "schedule": trainer.sched.state_dict()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)}))


def load_state(trainer: Trainer, path: Path, identity: str) -> int:
    """Restore ``trainer`` from the state file at ``path``; return the number of steps already taken. Refuses a
    state made with another recipe or cache."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["state"])
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise SaeVitError(f"Cannot read the training state {path} ({err}); delete it to start again.") from err
    if meta.get("format") != STATE_FORMAT:
        raise SaeVitError(f"{path} was written by another version of sae-vit and cannot be resumed; pass --overwrite "
                          "to start again.")
    if meta.get("recipe") != recipe(trainer.cfg) or meta.get("cache") != identity:
        raise SaeVitError(f"{path} is the state of a run with other settings or another cache; re-run with the same "
                          "options to resume, or pass --overwrite to start again.")
    with torch.no_grad():
        for name, t in trainer.sae.state_dict().items():
            t.copy_(tensors[f"sae.{name}"])  # in place: W_enc and b_enc are views of the trainer's encoder
        trainer.since_fired.copy_(tensors["since_fired"])
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, index, slot = name.split(".", 2)
            state.setdefault(int(index), {})[slot] = t  # load_state_dict moves each slot where AdamW wants it
    trainer.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    trainer.sched.load_state_dict(meta["schedule"])
    trainer.step_count, trainer.tokens = int(meta["step"]), int(meta["tokens"])
    return trainer.step_count


@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the current step ends: yields a zero-argument function that is true once Ctrl-C was
    pressed (the caller saves its state and raises :class:`KeyboardInterrupt`). A second Ctrl-C interrupts at once.
    Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)
