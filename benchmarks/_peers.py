"""Run each trainer on one exact token sequence and return the SAE (as a sae-vit :class:`SAE`) with step times.

* ``ours``: :func:`sae_vit.core.train.train_sae`.
* ``sparsify``: EleutherAI sparsify's own ``Trainer.fit`` (its optimiser, schedule, initialisation, dead-latent
  bookkeeping and checkpoint), driven through a stand-in model whose one layer returns our activations for
  the "token ids" it is given. Its checkpoint is read back with :func:`sae_vit.io.interop.from_sparsify`, so
  both are scored by the same code. Without CUDA its decoder runs eagerly (``SPARSIFY_DISABLE_TRITON=1``); on a
  GPU it uses its Triton kernels and its own bf16 autocast.
* ``sae-lens``: SAELens's ``SAETrainer.fit`` on a ``TopKTrainingSAE`` with its default configs, fed the batches
  as its activation iterator (its trainer's seam); its decoder norms folded into the encoder (as its inference
  save does) and the weights copied into a sae-vit :class:`SAE`.

Step times are wall-clock seconds between consecutive steps (the first step, which allocates, is excluded by
the callers).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from sae_vit.core.sae import SAE, SAEConfig
from sae_vit.core.train import TrainConfig, train_sae

if not torch.cuda.is_available():
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

#: Tokens per sparsify "sequence": its batch size counts sequences, so 16 of them make a 4,096-token step.
SEQ_LEN = 256


class Run(NamedTuple):
    """One training run."""

    sae: SAE
    """The trained SAE, in sae-vit's class."""
    step_s: list[float]
    """Seconds per step, in order."""
    dead_fraction: float
    """Fraction of latents dead by the trainer's own rule at the end (nan when it keeps no such count)."""


def have(name: str) -> bool:
    """Whether the peer ``name`` (``sparsify``, ``sae-lens``) is installed."""
    module = {"sparsify": "sparsify", "sae-lens": "sae_lens"}[name]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def run_ours(train: Tensor, order: Tensor, d_sae: int, k: int, batch_size: int, seed: int, device: str = "cpu",
             sae: SAE | None = None, **overrides) -> Run:
    """Train with :func:`train_sae`'s defaults (``overrides`` aside) on ``train[order]`` (from ``sae`` if given)."""
    cfg = TrainConfig(d_sae=d_sae, k=k, batch_size=batch_size, n_tokens=len(order), device=device, seed=seed,
                      log_every=1, **overrides)
    times = [time.perf_counter()]

    def tick(_state) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    sae = train_sae((train[i] for i in order.split(batch_size)), train.shape[1], cfg, progress=tick, sae=sae)
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return Run(sae, steps, sae.cfg.training["train_dead_fraction"])


class _Table(nn.Module):
    """A "layer" whose output for token ids [b, t] is the activations ``table[order[ids]]`` [b, t, d]."""

    def __init__(self, table: Tensor, order: Tensor):
        super().__init__()
        self.table, self.order = table, order

    def forward(self, ids: Tensor) -> Tensor:
        return self.table[self.order[ids]]


class _StandIn(nn.Module):
    """Just enough of a Hugging Face model for sparsify's Trainer: one layer list, a config, dummy inputs."""

    def __init__(self, table: Tensor, order: Tensor):
        super().__init__()
        self.layers = nn.ModuleList([_Table(table, order.to(table.device))])
        self.config = type("Config", (), {"num_hidden_layers": 1})()
        self.dummy_inputs = {"input_ids": torch.zeros(1, SEQ_LEN, dtype=torch.long)}
        self.times: list[float] = []

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return self.layers[0].table.device

    def forward(self, input_ids: Tensor) -> Tensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())  # one forward per training step
        return self.layers[0](input_ids)


class _Ids(torch.utils.data.Dataset):
    """Sequences of consecutive positions in the token order: sequence ``i`` holds ``i*SEQ_LEN ...``."""

    def __init__(self, n_tokens: int):
        self.n = n_tokens // SEQ_LEN

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": torch.arange(i * SEQ_LEN, (i + 1) * SEQ_LEN)}


def run_sparsify(train: Tensor, order: Tensor, d_sae: int, k: int, batch_size: int, seed: int,
                 auxk_alpha: float | None = None, dead_tokens: int | None = None, lr: float | None = None,
                 init: SAE | None = None) -> Run:
    """sparsify's ``Trainer.fit`` with its defaults (signum + schedule-free, lr 5e-3 / sqrt(d_sae / 2**14), no
    AuxK), ``batch_size / SEQ_LEN`` sequences per step, on ``train``'s device; ``auxk_alpha`` / ``dead_tokens`` /
    ``lr`` override; ``init`` replaces its initial weights (its ``b_dec`` is still set from the first batch)."""
    from sparsify import SaeConfig, Trainer
    from sparsify.config import TrainConfig as SparsifyConfig

    from sae_vit.io.interop import from_sparsify

    if batch_size % SEQ_LEN:
        raise ValueError(f"batch_size must be a multiple of {SEQ_LEN} for sparsify")
    model = _StandIn(train, order)
    extra = {"auxk_alpha": auxk_alpha} if auxk_alpha is not None else {}
    if dead_tokens is not None:
        extra["dead_feature_threshold"] = dead_tokens
    if lr is not None:
        extra["lr"] = lr
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SparsifyConfig(SaeConfig(num_latents=d_sae, k=k), batch_size=batch_size // SEQ_LEN,
                             hookpoints=["layers.0"], init_seeds=[seed], log_to_wandb=False, save_dir=tmp,
                             run_name="run", save_every=10**9, **extra)
        trainer = Trainer(cfg, _Ids(len(order)), model)
        if init is not None:
            coder = trainer.saes["layers.0"]
            with torch.no_grad():
                coder.encoder.weight.copy_(init.W_enc.T)
                coder.encoder.bias.copy_(init.b_enc)
                coder.W_dec.copy_(init.W_dec)
        model.times.clear()  # drop the width probe's forward
        trainer.fit()
        dead = trainer.num_tokens_since_fired["layers.0"] > trainer.cfg.dead_feature_threshold
        sae = from_sparsify(Path(tmp) / "run" / "layers.0")
    steps = [b - a for a, b in zip(model.times, model.times[1:], strict=False)]
    return Run(sae, steps, dead.float().mean().item())


def run_saelens(train: Tensor, order: Tensor, d_sae: int, k: int, batch_size: int, seed: int,
                lr: float | None = None) -> Run:
    """SAELens's ``SAETrainer.fit`` with its defaults (Adam at 3e-4, constant schedule, AuxK coefficient 1,
    decoder rows initialised at norm 0.1 with activations rescaled by them) on ``train[order]``."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    times: list[float] = []

    def batches():
        for i in order.split(batch_size):
            times.append(time.perf_counter())
            yield train[i]
        while True:  # fit() stops by its sample count; never reached with full batches
            yield train[order[:batch_size]]

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=train.shape[1], d_sae=d_sae, k=k, device=str(train.device)))
    cfg = SAETrainerConfig(total_training_samples=len(order), train_batch_size_samples=batch_size,
                           device=str(train.device), **({"lr": lr} if lr is not None else {}))
    cfg.lr_end = cfg.lr / 10  # what its runner config sets (used only by its cosine schedule)
    trainer = SAETrainer(cfg, sae, batches())
    trained = trainer.fit()
    dead = (trainer.n_forward_passes_since_fired > cfg.dead_feature_window).float().mean().item()
    trained.fold_W_dec_norm()  # unit decoder rows, the norms moved into the encoder (what its inference save does)
    w = {n: p.detach().float().cpu() for n, p in trained.state_dict().items()}
    b_enc = w["b_enc"] if trained.cfg.apply_b_dec_to_input else w["b_enc"] + w["b_dec"] @ w["W_enc"]
    ours = SAE.from_tensors(SAEConfig(d_in=train.shape[1], d_sae=d_sae, k=k),
                            {"W_enc": w["W_enc"], "b_enc": b_enc, "W_dec": w["W_dec"], "b_dec": w["b_dec"]})
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return Run(ours, steps, dead)
