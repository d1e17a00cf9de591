"""The trainer and its kernels on every device at hand: ``cpu`` always, ``cuda`` when one exists.

``SAEVIT_TEST_DEVICES=cuda`` (as ``benchmarks/gpu_check.py`` sets it) picks the devices explicitly.
"""

import os

import pytest
import torch

from sae_vit.core import kernels
from sae_vit.core.train import TrainConfig, init_sae, resolve, sae_loss, train_sae

DEVICES = os.environ.get("SAEVIT_TEST_DEVICES", "cpu,cuda" if torch.cuda.is_available() else "cpu").split(",")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny SAEs: one CPU thread is as fast and immune to spin-waits on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_data(n: int, d: int, n_atoms: int, seed: int) -> torch.Tensor:
    atoms = torch.randn(n_atoms, d, generator=torch.Generator().manual_seed(0))
    atoms /= atoms.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_atoms, (n, 4), generator=g)
    return torch.nn.functional.embedding_bag(idx, atoms, per_sample_weights=1 + torch.rand(n, 4, generator=g),
                                             mode="sum")


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_kernels_match_dense_on_device(device):
    g = torch.Generator().manual_seed(0)
    x, W_enc, b_enc, b_dec = (torch.randn(64, 32, generator=g), torch.randn(32, 256, generator=g),
                              torch.randn(256, generator=g), torch.randn(32, generator=g))
    W_dec = torch.randn(256, 32, generator=g)
    target = torch.randn(64, 32, generator=g)
    grads = []
    for fast in (True, False):
        params = [t.to(device).requires_grad_() for t in (W_enc, b_enc, b_dec, W_dec)]
        W, be, bd, Wd = params
        xs = x.to(device)
        if fast:
            enc = kernels.topk_encode(xs, W, be, bd, 8)
            x_hat = kernels.decode(enc.idx, enc.vals.relu(), Wd, enc.bags) + bd
        else:
            pre = (xs - bd) @ W + be
            vals, idx = pre.topk(8, dim=-1)
            x_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ Wd + bd
        (x_hat - target.to(device)).pow(2).sum().backward()
        grads.append([p.grad.cpu() for p in params])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_with_auxk_runs_and_trains_on_device(device):
    x = sparse_data(4096, 32, 128, seed=1)
    cfg = resolve(TrainConfig(d_sae=128, k=4, device=device, dtype="fp32", dead_tokens=512), 32)
    sae = init_sae(32, cfg, x[:1024])
    dead = torch.zeros(128, dtype=torch.bool, device=device)
    dead[:10] = True
    out = sae_loss(sae, x[:512].to(device), cfg, dead, 0.0)
    out.loss.backward()
    assert sae.W_dec.grad[:10].abs().sum() > 0  # AuxK reaches the dead latents
    for dtype in ("fp32", "bf16"):
        cfg = TrainConfig(d_sae=128, k=4, batch_size=512, n_tokens=20_000, device=device, dtype=dtype)
        trained = train_sae(iter(x.split(512) * 5), 32, cfg, eval_acts=sparse_data(2048, 32, 128, seed=2))
        assert trained.cfg.training["fvu"] < 0.35, dtype


@pytest.mark.parametrize("device", DEVICES)
def test_loss_with_fused_auxk_matches_dense_on_device(device):
    """FVU + AuxK (fused into the main kernels while few latents are dead) against dense autograd on ``device``."""
    x = sparse_data(512, 32, 128, seed=3).to(device) * 2 + 0.5
    cfg = resolve(TrainConfig(d_sae=128, k=4, aux_k=8, aux_coef=0.5, device=device, dtype="fp32"), 32)
    dead = torch.zeros(128, dtype=torch.bool, device=device)
    dead[::12] = True  # 11 dead latents: at most an eighth, the fused path
    grads, losses = [], []
    for fast in (True, False):
        sae = init_sae(32, cfg, x[:256].cpu())
        with torch.no_grad():
            sae.b_enc.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        sae = sae.to(device)
        if fast:
            loss = sae_loss(sae, x, cfg, dead, 0.0).loss
        else:
            x_hat, _ = sae(x)
            loss = (x_hat - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()
            pre = (x - sae.b_dec.detach()) @ sae.W_enc + sae.b_enc  # AuxK leaves b_dec alone
            top, idx = torch.where(dead, pre, -torch.inf).topk(8, dim=-1)
            e_hat = torch.zeros_like(pre).scatter(1, idx, top.relu()) @ sae.W_dec
            residual = (x - x_hat).detach()
            aux = (e_hat - residual).pow(2).sum() / (residual - residual.mean(dim=0)).pow(2).sum()
            loss = loss + 0.5 * aux
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.cpu() for n, p in sae.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[1]["W_dec"][dead.cpu()].abs().sum() > 0
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-4, atol=1e-5, msg=name)
