"""How the toy CLIP is trained (``saevit world train-clip``): contrastive learning on fresh images of the
synthetic world, plus auxiliary attribute heads that are discarded afterwards. :class:`TrainRecipe` is recorded
in the weights' metadata."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_vit.world import scenes as world
from sae_vit.world.toyclip import ToyClip, ToyClipConfig, evaluate, preprocess


@dataclass(frozen=True)
class TrainRecipe:
    """How the shipped toy CLIP was trained; every field is recorded in the weights' metadata."""

    seed: int = 0
    """Seeds the initialisation and the training images."""
    steps: int | None = None
    """Optimiser steps; when None, train for ``minutes`` of wall-clock time."""
    minutes: float = 27.0
    """Wall-clock budget when ``steps`` is None (the learning-rate schedule follows elapsed time)."""
    batch_size: int = 64
    """Images per step (small batches learn more per second of compute here)."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay (not on norms, biases, embeddings)."""
    warmup: float = 0.03
    """Fraction of the run spent warming up the learning rate."""
    aux_weight: float = 1.0
    """Weight of the auxiliary loss: predict the scene's shape, colour, background and written word from the
    image embedding with a linear head (discarded after training). Dense labels make learning much faster
    than captions alone, which mention only some attributes."""
    aux_patch_weight: float = 1.0
    """Weight of the same auxiliary loss read from the mean of the final patch tokens (a second linear head,
    also discarded): a short gradient path that makes the patch features learn shapes sooner."""
    bf16: bool = False
    """bf16 autocast for the forward pass."""
    workers: int = 1
    """Processes rendering training images."""
    mix: world.TrainingMix = field(default_factory=world.TrainingMix)
    """The training distribution of the world."""


class _CaptionedImages(torch.utils.data.IterableDataset):
    """An endless stream of (uint8 images [b, 64, 64, 3], captions) batches, rendered in worker processes;
    each worker has its own seed stream."""

    def __init__(self, seed: int, batch_size: int, mix: world.TrainingMix):
        self.seed, self.batch_size, self.mix = seed, batch_size, mix

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.seed, 0x7EA1, wid])
        while True:
            scenes = [world.training_scene(rng, self.mix) for _ in range(self.batch_size)]
            images = torch.from_numpy(np.stack([world.render_array(s) for s in scenes]))
            yield images, [s.caption for s in scenes], torch.tensor([scene_labels(s) for s in scenes])


#: The attributes of the auxiliary loss and their number of classes (the last class of shape and word
#: is "none").
AUX_HEADS = {"shape": len(world.OBJECTS) + 1, "colour": len(world.COLOURS),
             "background": len(world.BACKGROUNDS), "word": len(world.WRITABLE) + 1}


def scene_labels(scene: world.Scene) -> list[int]:
    """Class indices of a scene for :data:`AUX_HEADS` (colour is ignored, -100, without a shape)."""
    # car and boat share a class: which vehicle it is comes only from the captions, where the background
    # is a shortcut (boats are on water 95 % of the time): the bias the waterbirds task measures
    shape = "car" if scene.shape in world.VEHICLES else scene.shape
    return [
        world.OBJECTS.index(shape) if scene.shape else len(world.OBJECTS),
        list(world.COLOURS).index(scene.colour) if scene.shape else -100,
        world.BACKGROUNDS.index(scene.background),
        world.WRITABLE.index(scene.word) if scene.word else len(world.WRITABLE),
    ]


def aux_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of the cross-entropies of the attribute heads: logits [b, sum(AUX_HEADS)], labels [b, 4]."""
    parts = logits.split(list(AUX_HEADS.values()), dim=1)
    return sum(F.cross_entropy(p, labels[:, i], ignore_index=-100) for i, p in enumerate(parts))


def contrastive_loss(image_emb: Tensor, captions: Sequence[str], clip: ToyClip) -> Tensor:
    """Symmetric InfoNCE in which images with identical captions are all positives: each image is matched
    to its caption among the batch's distinct captions, and each distinct caption to the uniform
    distribution over its images."""
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    target = torch.tensor([index[c] for c in captions])
    text_emb = F.normalize(clip.text(clip.tokenize(unique)), dim=-1)
    logits = clip.logit_scale.exp().clamp(max=100) * F.normalize(image_emb, dim=-1) @ text_emb.T  # [b, u]
    loss_i = F.cross_entropy(logits, target)
    pos = F.one_hot(target, len(unique)).T.float()  # [u, b]
    loss_t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def _hardware() -> str:
    """CPU model, core count and torch threads, for the model card."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def _optimizer(recipe: TrainRecipe, *modules: nn.Module) -> torch.optim.AdamW:
    """AdamW over the parameters of ``modules``, without weight decay on norms, biases and embeddings."""
    decay, no_decay = [], []
    for name, p in (named for module in modules for named in module.named_parameters()):
        (no_decay if p.ndim < 2 or "embed" in name or "token" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(recipe: TrainRecipe, frac: float) -> float:
    """Learning rate after ``frac`` of the run: linear warm-up, then cosine decay to zero."""
    if frac < recipe.warmup:
        return recipe.lr * (frac / recipe.warmup)
    return recipe.lr * (0.5 * (1 + math.cos(math.pi * (frac - recipe.warmup) / (1 - recipe.warmup))))


def _batch_loss(clip: ToyClip, aux: nn.Module, aux_patch: nn.Module, recipe: TrainRecipe, images: Tensor,
                captions: Sequence[str], labels: Tensor) -> Tensor:
    """Contrastive loss of one batch plus the weighted auxiliary losses of the embedding and the patch tokens."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
        tokens = clip.image.forward_features(preprocess(images))
        image_emb = clip.image.forward_head(tokens)
        loss = contrastive_loss(image_emb.float(), captions, clip)
        if recipe.aux_weight:
            loss = loss + recipe.aux_weight * aux_loss(aux(image_emb).float(), labels)
        if recipe.aux_patch_weight:
            patch_mean = tokens[:, clip.image.num_prefix_tokens :].mean(1)
            loss = loss + recipe.aux_patch_weight * aux_loss(aux_patch(patch_mean).float(), labels)
    return loss


def train_toy_clip(recipe: TrainRecipe = TrainRecipe(), config: ToyClipConfig | None = None,
                   progress: Callable[[dict[str, float]], None] | None = None, eval_n: int = 1200) -> ToyClip:
    """Train a toy CLIP from scratch on fresh world images and evaluate it on held-out ones.

    Returns the model (eval mode) with ``.metadata`` holding the recipe, the time taken, the hardware,
    the loss curve and the accuracies of :func:`~sae_vit.world.toyclip.evaluate`. ``progress`` is called at the
    first step, every 20 steps and at the last with ``{"step", "seconds", "loss", "lr"}`` (loss smoothed over
    ~20 steps).
    """
    torch.manual_seed(recipe.seed)
    clip = ToyClip(config)
    aux = nn.Linear(clip.config.embed_dim, sum(AUX_HEADS.values()))
    aux_patch = nn.Linear(clip.config.width, sum(AUX_HEADS.values()))
    opt = _optimizer(recipe, clip, aux, aux_patch)
    loader = torch.utils.data.DataLoader(
        _CaptionedImages(recipe.seed, recipe.batch_size, recipe.mix), batch_size=None, num_workers=recipe.workers,
        prefetch_factor=4 if recipe.workers else None, persistent_workers=False,
    )
    clip.train()
    start, step, curve, ema = time.perf_counter(), 0, [], None

    def report(lr: float) -> None:
        curve.append({"step": step, "seconds": round(time.perf_counter() - start, 1), "loss": round(ema, 4),
                      "lr": lr})
        if progress is not None:
            progress(curve[-1])

    for images, captions, labels in loader:
        frac = step / recipe.steps if recipe.steps else (time.perf_counter() - start) / (recipe.minutes * 60)
        if frac >= 1:
            break
        lr = lr_at(recipe, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = _batch_loss(clip, aux, aux_patch, recipe, images, captions, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 20 == 0 or step == 1:
            report(lr)
    seconds = time.perf_counter() - start
    if step and (not curve or curve[-1]["step"] != step):
        report(0.0)
    clip.eval().requires_grad_(False)
    clip.metadata = {"recipe": {**asdict(recipe), "mix": asdict(recipe.mix)}, "steps": step,
                     "images_seen": step * recipe.batch_size, "train_seconds": round(seconds, 1),
                     "hardware": _hardware(), "final_loss": ema, "loss_curve": curve[-50:]}
    if eval_n:
        clip.metadata["accuracies"] = evaluate(clip, n=eval_n)
    return clip
