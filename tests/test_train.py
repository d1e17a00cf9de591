"""The trainer: dictionary recovery on synthetic data, ReLU+L1, unit decoder, normalisations, AuxK, metadata."""

import math

import pytest
import torch

from sae_vit.core.errors import SaeVitError
from sae_vit.core.metrics import evaluate
from sae_vit.core.sae import SAE, read_checkpoint
from sae_vit.core.train import (
    ADAM_BETAS,
    LR_AT_16K,
    TrainConfig,
    Trainer,
    TrainState,
    geometric_median,
    init_sae,
    lr_factor,
    optimizer_step,
    rebatch,
    resolve,
    sae_loss,
    train_sae,
)

D_IN, N_ATOMS, ACTIVE = 64, 256, 4


def dictionary(seed: int = 0) -> torch.Tensor:
    """A random ground-truth dictionary, [N_ATOMS, D_IN] unit rows."""
    d = torch.randn(N_ATOMS, D_IN, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=1, keepdim=True)


def sparse_acts(atoms: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """[n, D_IN]: each token a sum of ACTIVE distinct atoms with non-negative weights in [1, 1.5].

    Weights are kept away from 0 on purpose: with 256 atoms in 64 dimensions, interference between atoms is as
    large as a weight near 0, so no linear encoder could find such an atom (weights in [0.5, 1.5] cap the FVU
    of a TopK SAE near 0.06).
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, atoms.shape[0], generator=g).argsort(dim=1)[:, :ACTIVE]
    coef = 1 + 0.5 * torch.rand(n, ACTIVE, generator=g)
    return torch.einsum("na,nad->nd", coef, atoms[idx])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These SAEs are tiny: one thread is as fast, and immune to OpenMP spin-waits on a busy shared CPU
    (measured 30x slower steps with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def atoms():
    return dictionary()


@pytest.fixture(scope="module")
def train_acts(atoms):
    return sparse_acts(atoms, 100_000, seed=1)


@pytest.fixture(scope="module")
def eval_acts(atoms):
    return sparse_acts(atoms, 8192, seed=2)


def epochs(x: torch.Tensor, batch_size: int):
    """Endless batches over ``x``, as a cache reader would yield them."""
    while True:
        yield from x.split(batch_size)


def test_topk_recovers_ground_truth_dictionary(atoms, train_acts, eval_acts):
    cfg = TrainConfig(d_sae=256, k=4, lr=4e-3, batch_size=512, n_tokens=600_000, warmup_steps=20,
                      device="cpu", seed=0)
    sae = train_sae(epochs(train_acts, 1000), D_IN, cfg, eval_acts=eval_acts)
    best_cos = (atoms @ sae.W_dec.detach().T).max(dim=1).values
    assert best_cos.mean().item() >= 0.9
    assert (best_cos > 0.9).float().mean().item() >= 0.95
    assert sae.cfg.training["fvu"] <= 0.05
    assert sae.cfg.training["l0"] == pytest.approx(4.0, abs=0.01)
    assert sae.cfg.training["dead_fraction"] == 0.0


def test_relu_l1_reduces_loss_and_l0(train_acts):
    states: list[TrainState] = []
    cfg = TrainConfig(architecture="relu", d_sae=128, l1_coefficient=5e-3, lr=2e-3, batch_size=512,
                      n_tokens=100_000, warmup_steps=10, device="cpu", log_every=5)
    sae = train_sae(epochs(train_acts, 512), D_IN, cfg, progress=states.append)
    first, last = states[0], states[-1]
    assert last.step == last.n_steps == math.ceil(100_000 / 512)
    assert last.tokens == 100_000
    assert last.loss < 0.5 * first.loss
    assert last.l0 < 0.5 * first.l0
    assert last.fvu < 0.75 and last.fvu < 0.5 * first.fvu  # L1 shrinkage costs some reconstruction
    assert sae.cfg.l1_coefficient == 5e-3 and sae.cfg.k is None


def test_decoder_rows_stay_unit_norm(train_acts):
    cfg = TrainConfig(d_sae=128, k=8, lr=1e-2, batch_size=256, n_tokens=256 * 30, device="cpu")
    sae = train_sae(epochs(train_acts, 256), D_IN, cfg)
    norms = sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(128), atol=1e-5, rtol=0)


def test_encoder_starts_as_decoder_transpose_and_b_dec_at_mean(train_acts):
    cfg = resolve(TrainConfig(d_sae=128, k=8, device="cpu"), D_IN)
    sae = init_sae(D_IN, cfg, train_acts[:5000])
    torch.testing.assert_close(sae.W_enc.detach(), sae.W_dec.detach().T)
    torch.testing.assert_close(sae.b_dec.detach(), train_acts[:5000].mean(dim=0))


@pytest.mark.parametrize("normalization", ["layer_norm", "constant"])
def test_normalisation_round_trips_through_checkpoint(normalization, train_acts, eval_acts, tmp_path):
    x = train_acts * 7 + 3  # an offset and scale that normalisation has to handle
    cfg = TrainConfig(d_sae=128, k=8, normalization=normalization, batch_size=512, n_tokens=512 * 20,
                      device="cpu")
    sae = train_sae(epochs(x, 512), D_IN, cfg, eval_acts=eval_acts * 7 + 3)
    if normalization == "constant":
        mean_sq_norm = (x[:512] * sae.scale).pow(2).sum(dim=1).mean().item()  # scale set on the first batch
        assert mean_sq_norm == pytest.approx(D_IN, rel=1e-4)
    path = sae.save(tmp_path / "sae.safetensors")
    loaded = SAE.load(path)
    assert loaded.cfg.normalization == normalization
    assert loaded.scale.item() == pytest.approx(sae.scale.item(), rel=1e-7)
    with torch.no_grad():
        a, b = sae(eval_acts[:256] * 7 + 3), loaded(eval_acts[:256] * 7 + 3)
    torch.testing.assert_close(a.x_hat, b.x_hat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-5, rtol=1e-5)


def test_auxk_revives_dead_latents(atoms, train_acts, eval_acts):
    """A quarter of the latents get tiny encoder columns, so they never make the top k; only AuxK can help."""
    base = TrainConfig(d_sae=256, k=4, lr=4e-3, batch_size=512, n_tokens=512 * 150, warmup_steps=10,
                       dead_tokens=5_000, device="cpu")
    dead_after = {}
    for aux_coef in (0.0, 1 / 32):
        cfg = resolve(TrainConfig(**{**base.__dict__, "aux_coef": aux_coef}), D_IN)
        sae = init_sae(D_IN, cfg, train_acts[:4096])
        with torch.no_grad():
            sae.W_enc[:, :64] *= 0.01
        assert evaluate(sae, eval_acts)["dead_fraction"] >= 0.25
        sae = train_sae(epochs(train_acts, 512), D_IN, cfg, eval_acts=eval_acts, sae=sae)
        dead_after[aux_coef] = sae.cfg.training["dead_fraction"]
    assert dead_after[0.0] >= 0.2  # without AuxK the crippled latents stay dead
    assert dead_after[1 / 32] <= 0.05


def test_heldout_metrics_land_in_checkpoint(train_acts, eval_acts, tmp_path, capsys):
    cfg = TrainConfig(d_sae=128, k=8, batch_size=512, n_tokens=5000, device="cpu")
    extra = {"model": "toy", "layer": 3, "site": "resid_post", "tokens": "cls"}
    sae = train_sae(epochs(train_acts, 700), D_IN, cfg, eval_acts=eval_acts, sae_config_extra=extra)
    assert capsys.readouterr().out == ""  # the trainer never prints
    cfg_loaded, _ = read_checkpoint(sae.save(tmp_path / "sae.safetensors"))
    training = cfg_loaded.training
    assert (cfg_loaded.model, cfg_loaded.layer, cfg_loaded.tokens) == ("toy", 3, "cls")
    assert training["tokens_seen"] == 5000 and training["steps"] == 10 and training["eval_tokens"] == 8192
    reference = evaluate(SAE.load(tmp_path / "sae.safetensors"), eval_acts)
    for key in ("l0", "fvu", "mse", "dead_fraction", "dense_fraction"):
        assert training[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-9)
    assert 0 < training["fvu"] < 1
    assert training["recipe"]["architecture"] == "topk" and training["recipe"]["k"] == 8
    assert training["recipe"]["aux_k"] == D_IN // 2


def test_bf16_matches_fp32_fvu(train_acts, eval_acts):
    fvus = {}
    for dtype in ("fp32", "bf16"):
        cfg = TrainConfig(d_sae=256, k=4, lr=4e-3, batch_size=512, n_tokens=512 * 100, warmup_steps=10,
                          dtype=dtype, device="cpu")
        fvus[dtype] = train_sae(epochs(train_acts, 512), D_IN, cfg, eval_acts=eval_acts).cfg.training["fvu"]
    assert fvus["bf16"] == pytest.approx(fvus["fp32"], rel=0.02)


@pytest.mark.parametrize("normalization", ["none", "layer_norm"])
def test_sparse_topk_loss_matches_dense_reference(normalization, train_acts):
    """The trainer's k-sparse decode and cheap b_dec path give the loss and gradients of SAE.forward."""
    cfg = resolve(TrainConfig(d_sae=128, k=8, normalization=normalization, aux_coef=0.0, device="cpu"), D_IN)
    sae = init_sae(D_IN, cfg, train_acts[:2048])
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    x = train_acts[:512] * 3 + 1
    out = sae_loss(sae, x, cfg, torch.zeros(128, dtype=torch.bool), 0.0)
    out.loss.backward()
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    x_hat, f = sae(x)
    ref = (x_hat - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()
    ref.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.l0.item() == pytest.approx((f != 0).sum(dim=-1).float().mean().item())
    assert torch.equal(out.fired, (f != 0).any(dim=0))
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_trainer_matches_plain_adamw_on_the_sae_parameters(train_acts):
    """The trainer's W_enc layout (trained through a row-major leaf on W_enc's storage) changes only speed."""
    cfg = resolve(TrainConfig(d_sae=128, k=8, device="cpu", n_tokens=4 * 512, batch_size=512, dtype="fp32",
                              aux_coef=0.0), D_IN)
    ours, ref = init_sae(D_IN, cfg, train_acts[:2048]), init_sae(D_IN, cfg, train_acts[:2048])
    start = ref.W_enc.detach().clone()
    trainer = Trainer(ours, cfg)
    opt = torch.optim.AdamW(ref.parameters(), lr=cfg.lr, betas=ADAM_BETAS, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, trainer.n_steps, cfg))
    for x in train_acts[: 4 * 512].split(512):
        trainer.step(x)
        optimizer_step(ref, opt, sae_loss(ref, x, cfg, torch.zeros(128, dtype=torch.bool), 0.0).loss, cfg.grad_clip)
        sched.step()
    sae = trainer.finish()
    assert sae.W_enc.is_contiguous() and sae.W_enc.requires_grad
    assert not torch.allclose(sae.W_enc, start)
    for (name, p), q in zip(sae.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_rebatch_rechunks_and_checks_width():
    chunks = [torch.zeros(300, 4), torch.zeros(500, 4), torch.zeros(250, 4)]
    assert [b.shape[0] for b in rebatch(chunks, 400, 4)] == [400, 400, 250]
    with pytest.raises(SaeVitError, match=r"expected \[n, 8\]"):
        list(rebatch(chunks, 400, 8))


def test_geometric_median_resists_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(900, 3, generator=g) * 0.1, torch.full((100, 3), 100.0)])
    assert geometric_median(x).norm().item() < 0.5
    assert x.mean(dim=0).norm().item() > 10


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(warmup_steps=10, schedule="cosine")
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)  # cosine half-way through the decay
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)
    assert lr_factor(55, 100, TrainConfig(warmup_steps=10, schedule="linear")) == pytest.approx(0.5)
    assert lr_factor(99, 100, TrainConfig(warmup_steps=10, schedule="constant")) == 1.0


def test_auto_lr_and_defaults():
    cfg = resolve(TrainConfig(device="cpu"), 768)  # lr="auto" is the default
    assert cfg.d_sae == 16 * 768
    assert cfg.lr == pytest.approx(LR_AT_16K * math.sqrt(2**14 / (16 * 768)))  # at d_in 768, batch 4096
    assert resolve(TrainConfig(device="cpu", batch_size=1024), 768).lr == pytest.approx(cfg.lr / 2)  # sqrt(batch)
    assert resolve(TrainConfig(device="cpu", d_sae=16 * 768), 192).lr == pytest.approx(cfg.lr * 2)  # 1/sqrt(d_in)
    assert cfg.aux_k == 384 and cfg.schedule == "wsd"
    assert cfg.warmup_steps == round(0.05 * math.ceil(10_000_000 / 4096))
    assert cfg.dead_tokens == 256 * 16 * 768 // 32  # 256 average firings of a latent
    # A small dictionary's latents fire every few dozen tokens: dead after a few thousand, not 10 % of the run.
    small = resolve(TrainConfig(device="cpu", d_sae=512, k=6, n_tokens=1_000_000, batch_size=512), 128)
    assert small.dead_tokens == 256 * 512 // 6
    # ... but never after a tenth of the run, nor within a batch.
    assert resolve(TrainConfig(device="cpu", n_tokens=100_000), 768).dead_tokens == 10_000
    assert resolve(TrainConfig(device="cpu", n_tokens=8192), 768).dead_tokens == 4096
    assert resolve(TrainConfig(architecture="relu", lr="auto", device="cpu"), 768).lr == 4e-4


def test_wsd_schedule_holds_the_peak_then_decays_over_the_last_fifth():
    cfg = TrainConfig(warmup_steps=10)  # schedule="wsd" is the default
    assert [lr_factor(s, 100, cfg) for s in (0, 9, 10, 79)] == pytest.approx([0.1, 1.0, 1.0, 1.0])
    assert lr_factor(80, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(90, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(99, 100, cfg) == pytest.approx(0.05)
    assert lr_factor(100, 100, cfg) == 0.0
    # A run shorter than its warm-up still reaches the peak (warm-up capped at a fifth of the run).
    assert lr_factor(1, 10, TrainConfig(warmup_steps=200)) == 1.0


@pytest.mark.parametrize("bad", [{"architecture": "gated"}, {"normalization": "rms"}, {"lr": -1.0},
                                 {"lr": "fast"}, {"k": 0}, {"schedule": "step"}, {"d_sae": 16, "k": 32}])
def test_bad_options_raise_user_errors(bad):
    with pytest.raises(SaeVitError):
        train_sae(iter([torch.zeros(8, D_IN)]), D_IN, TrainConfig(device="cpu", **bad))


def test_empty_stream_is_a_user_error():
    with pytest.raises(SaeVitError, match="No training activations"):
        train_sae(iter([]), D_IN, TrainConfig(device="cpu"))
