"""Activation sets the training benchmarks share: (train, held-out) tensors, each [n, d_in] float32.

* ``known``: sparse sums of a fixed random dictionary, so a trained SAE can be scored against the truth.
* ``toyclip``: the toy CLIP's layer-8 residual stream (all tokens) over synthetic-world images, cached once with
  :func:`sae_vit.pipeline.cache` (every 20th image held out, as the cache splits it).
* ``heavy``: 768-d activations shaped like a ViT's residual stream: Zipf-distributed feature frequencies (repeats allowed),
  log-normal magnitudes, a large offset shared by every token and a few outlier dimensions.
* ``dying``: sparse sums of a dictionary smaller than the SAE, so a few per cent of the latents die during
  training and AuxK has work to do (the throughput benchmark's data).

Train and held-out tokens are disjoint draws (different generator seeds, or different images).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

#: Per data set: d_in, the SAE's d_sae and k, and the training tokens of the quality benchmark.
SETTINGS = {
    "known": {"d_in": 128, "d_sae": 512, "k": 6, "n_tokens": 1_000_000},
    "toyclip": {"d_in": 64, "d_sae": 1024, "k": 8, "n_tokens": 1_000_000},
    "heavy": {"d_in": 768, "d_sae": 3072, "k": 32, "n_tokens": 500_000},
}
N_EVAL = 16_384


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    """[n, d] random unit vectors."""
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=1, keepdim=True)


def known_dictionary() -> torch.Tensor:
    """The ground truth of ``known``: 512 unit atoms in 128 dimensions, [512, 128]."""
    return unit_rows(512, 128, seed=1234)


def known(n: int, seed: int) -> torch.Tensor:
    """[n, 128]: each token 6 distinct atoms of :func:`known_dictionary` with weights uniform in [1, 2]."""
    atoms = known_dictionary()
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.rand(len(c), atoms.shape[0], generator=g).topk(6, dim=1).indices
                     for c in torch.arange(n).split(50_000)])
    coef = 1 + torch.rand(n, 6, generator=g)
    return F.embedding_bag(idx, atoms, per_sample_weights=coef, mode="sum")


def heavy(n: int, seed: int, d: int = 768, n_features: int = 6144, active: int = 24) -> torch.Tensor:
    """[n, d]: ``active`` features per token drawn with Zipf(1) frequencies from ``n_features`` unit directions,
    log-normal magnitudes (sigma 1), plus an offset of norm 30 shared by all tokens, Gaussian noise (std 0.05
    per dimension) and 4 outlier dimensions carrying a heavy-tailed (Student t, 3 d.o.f.) signal of scale 3 (about a third of the variance)."""
    feats = unit_rows(n_features, d, seed=4321)
    fixed = torch.Generator().manual_seed(8765)
    offset = torch.randn(d, generator=fixed)
    offset *= 30 / offset.norm()
    outliers = torch.randperm(d, generator=fixed)[:4]
    g = torch.Generator().manual_seed(seed)
    cdf = (1.0 / torch.arange(1, n_features + 1, dtype=torch.float64)).cumsum(0)
    idx = torch.searchsorted(cdf / cdf[-1], torch.rand(n, active, generator=g, dtype=torch.float64))
    idx = idx.clamp_max(n_features - 1)
    mag = torch.exp(torch.randn(n, active, generator=g))
    x = F.embedding_bag(idx, feats, per_sample_weights=mag, mode="sum") + offset
    x += 0.05 * torch.randn(n, d, generator=g)
    t = torch.distributions.StudentT(3.0)
    torch.manual_seed(seed)
    x[:, outliers] += 3 * t.sample((n, 4)).clamp(-50, 50)
    return x


def dying(n: int, seed: int, d: int = 768, n_atoms: int = 12_000, active: int = 32) -> torch.Tensor:
    """[n, d]: ``active`` of ``n_atoms`` fixed unit atoms per token (weights in [1, 2]); with an SAE of 12,288
    latents a couple of per cent of the latents find no atom and die."""
    atoms = unit_rows(n_atoms, d, seed=1234)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_atoms, (n, active), generator=g)
    coef = 1 + torch.rand(n, active, generator=g)
    return F.embedding_bag(idx, atoms, per_sample_weights=coef, mode="sum")


def toyclip(cache_dir: Path, n_images: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) toy-CLIP layer-8 activations, all tokens; caches ``n_images`` world images into
    ``cache_dir`` first if it holds no finished cache."""
    from sae_vit.io.cache import CacheReader

    if not (cache_dir / "manifest.json").exists():
        import sae_vit.pipeline as api

        api.cache(out=cache_dir, model="toy", layers=[8], tokens="all", max_images=n_images, seed=0,
                  batch_size=128, device="cpu")
    reader = CacheReader(cache_dir)
    return reader.load(8, "all", "train").float(), reader.load(8, "all", "eval").float()


def load(name: str, seed: int, cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) for data set ``name``; ``seed`` draws the synthetic sets (the toy cache is fixed)."""
    n_train = min(SETTINGS[name]["n_tokens"], 500_000) if name in SETTINGS else 0
    if name == "known":
        return known(n_train, 1000 + seed), known(N_EVAL, 99)
    if name == "heavy":
        return heavy(n_train, 1000 + seed), heavy(N_EVAL, 99)
    if name == "toyclip":
        return toyclip(cache_dir)
    raise ValueError(name)


def order(n_train: int, n_tokens: int, seed: int) -> torch.Tensor:
    """The exact token sequence every trainer sees, as indices into the training set: shuffled passes (a fresh
    permutation per pass, from ``seed``) cut to ``n_tokens``, [n_tokens] int64."""
    g = torch.Generator().manual_seed(seed)
    passes = -(-n_tokens // n_train)
    return torch.cat([torch.randperm(n_train, generator=g) for _ in range(passes)])[:n_tokens]
