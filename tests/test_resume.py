"""Training survives interruption and re-runs: a killed run resumes to the same SAE as an uninterrupted one, a
finished SAE with the same recipe is kept, the destination is checked before the first step."""

from __future__ import annotations

import random

import pytest
import torch

from sae_vit.core.errors import SaeVitError
from sae_vit.core.train import TrainConfig
from sae_vit.pipeline.resume import state_path
from sae_vit.pipeline.training import Job, train_many

CFG = TrainConfig(k=4, expansion=2, batch_size=64, log_every=1, seed=3, dtype="fp32")
N_TOKENS = 64 * 12


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import sae_vit.pipeline as api

    out = tmp_path_factory.mktemp("resume") / "cache"
    api.cache(out=out, model="toy", layers=[2], tokens="all", max_images=60, seed=0, batch_size=30)
    return out


def _train(cache, out, cfg=CFG, **kw):
    return train_many(cache, [Job(2, "all", cfg, out)], n_tokens=N_TOKENS, **kw)[0]


def _stop_at(step: int):
    def progress(_i, state):
        if state.step == step:
            raise KeyboardInterrupt
    return progress


def _weights(sae):
    return {name: t.detach().clone() for name, t in sae.state_dict().items()}


def test_interrupted_run_resumes_to_the_same_sae(cache, tmp_path):
    reference, _ = _train(cache, tmp_path / "a" / "sae.safetensors")
    stop = random.Random(0).randint(2, 10)  # a random step, fixed per run of the suite
    out = tmp_path / "b" / "sae.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _train(cache, out, progress=_stop_at(stop), state_seconds=0)
    assert state_path(out).exists() and not out.exists()
    resumed, path = _train(cache, out)
    assert path == out and not state_path(out).exists()
    assert resumed.cfg.training["steps"] == reference.cfg.training["steps"]
    for name, t in _weights(reference).items():
        torch.testing.assert_close(resumed.state_dict()[name], t, rtol=0, atol=0, msg=name)


def test_state_from_other_settings_is_refused(cache, tmp_path):
    out = tmp_path / "sae.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _train(cache, out, progress=_stop_at(3), state_seconds=0)
    other = TrainConfig(**{**CFG.__dict__, "k": 6})
    with pytest.raises(SaeVitError, match="other settings"):
        _train(cache, out, cfg=other)
    _, path = _train(cache, out, cfg=other, overwrite=True)  # --overwrite starts again
    assert path.exists() and not state_path(out).exists()


def test_replace_stale_resumes_its_own_state_and_drops_another(cache, tmp_path):
    """make-assets' ``overwrite=REPLACE_STALE``: an interrupted run of the same recipe resumes (to the same SAE as an
    uninterrupted one), the state of another recipe is dropped and training starts afresh."""
    from sae_vit.pipeline.training import REPLACE_STALE

    reference, _ = _train(cache, tmp_path / "a" / "sae.safetensors")
    out = tmp_path / "b" / "sae.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _train(cache, out, progress=_stop_at(5), state_seconds=0)
    steps = []
    resumed, _ = _train(cache, out, overwrite=REPLACE_STALE, progress=lambda _i, s: steps.append(s.step))
    assert steps[0] >= 5 and not state_path(out).exists()  # went on from the saved step
    for name, t in _weights(reference).items():
        torch.testing.assert_close(resumed.state_dict()[name], t, rtol=0, atol=0, msg=name)
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        _train(cache, out, progress=_stop_at(5), state_seconds=0)
    other, steps = TrainConfig(**{**CFG.__dict__, "k": 6}), []
    sae, _ = _train(cache, out, cfg=other, overwrite=REPLACE_STALE, progress=lambda _i, s: steps.append(s.step))
    assert steps[0] < 5 and sae.cfg.k == 6 and not state_path(out).exists()


def test_state_of_another_layout_is_refused(cache, tmp_path):
    """A state file written before the encoder's layout changed (no format, or another one) is refused in one line
    instead of loading AdamW moments of other shapes."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "sae.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _train(cache, out, progress=_stop_at(3), state_seconds=0)
    path = state_path(out)
    with safe_open(str(path), framework="pt") as fh:
        meta, tensors = json.loads(fh.metadata()["state"]), {name: fh.get_tensor(name) for name in fh.keys()}
    del meta["format"]
    save_file(tensors, str(path), metadata={"state": json.dumps(meta)})
    with pytest.raises(SaeVitError, match="another version"):
        _train(cache, out)


def test_finished_sae_is_kept_when_the_recipe_matches(cache, tmp_path):
    out = tmp_path / "sae.safetensors"
    _train(cache, out)
    before = out.read_bytes()
    told = []
    _train(cache, out, kept=told.append)
    assert told == [out] and out.read_bytes() == before
    with pytest.raises(SaeVitError, match="--overwrite"):
        _train(cache, out, cfg=TrainConfig(**{**CFG.__dict__, "k": 6}))
    assert out.read_bytes() == before


def test_destination_is_checked_before_training(cache, tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(SaeVitError, match="is a folder"):
        _train(cache, tmp_path / "folder")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SaeVitError, match="not a folder"):
        _train(cache, tmp_path / "file" / "sae.safetensors")
