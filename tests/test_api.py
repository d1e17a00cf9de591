"""The top-level Python API: lazy names, SAE.from_pretrained for every source kind, encode / decode.

Foreign checkpoints are written by hand in each library's layout (as tests/test_interop.py does), Hub repos are
laid out on disk exactly as huggingface_hub's cache stores them (tests/conftest.py's lay_out_hub_cache), and nothing
may open a network connection (its offline_hub fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sae_vit
from sae_vit import SAE, SAEConfig, SaeVitError, TokenNorm
from tests.conftest import HUB_COMMIT as COMMIT
from tests.conftest import lay_out_hub_cache

ROOT = Path(__file__).resolve().parents[1]
D_IN, D_SAE = 16, 48
pytestmark = pytest.mark.usefixtures("offline_hub")  # every test: offline, private caches


def make_sae(architecture="topk", normalization="none", seed=0, layer=4, site="resid_post", tokens="all") -> SAE:
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture, k=6 if architecture == "topk" else None,
                    l1_coefficient=None if architecture == "topk" else 8e-5, normalization=normalization,
                    model="toy", layer=layer, site=site, tokens=tokens)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5)
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.1)
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=g) / D_SAE**0.5)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.3)
        sae.scale.fill_(0.37)
    return sae.eval()


def acts(shape=(4, 5), seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, D_IN, generator=g) * 3 + 0.5


def assert_close(a, b, atol=1e-5):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g}"


# -- the package -------------------------------------------------------------------------------------------
def test_every_public_name_imports_and_is_documented():
    assert len(set(sae_vit.__all__)) == len(sae_vit.__all__)
    assert set(sae_vit.__all__) == set(sae_vit._HOMES)
    for name in sae_vit.__all__:
        value = getattr(sae_vit, name)
        assert value is not None and (value.__doc__ or "").strip(), name
        assert name in sae_vit.__doc__, f"{name} is not described in the package docstring"
    namespace: dict = {}
    exec("from sae_vit import *", namespace)
    assert set(sae_vit.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sae_vit.nope  # noqa: B018


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                          cwd=ROOT).stdout


def test_import_is_lazy_and_sae_installs_the_resolver():
    out = _run(
        "import sys, sae_vit\n"
        "print('torch' in sys.modules, len(sae_vit.list_released()) > 0, 'torch' in sys.modules)\n"
        "from sae_vit import SAE\n"
        "from sae_vit.core.sae import REF_RESOLVER\n"
        "from sae_vit.io.resolve import resolve_sae_path\n"
        "print(REF_RESOLVER == [resolve_sae_path], SAE.__module__)\n"
    )
    assert out.split("\n")[:2] == ["False True False", "True sae_vit.core.sae"]


# -- encode / decode -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["topk", "relu"])
@pytest.mark.parametrize("normalization", ["layer_norm", "constant", "none"])
def test_decode_of_encode_is_the_sae_reconstruction(architecture, normalization):
    sae = make_sae(architecture, normalization)
    x = acts()
    f, norm = sae.encode(x, return_norm=True)
    out = sae(x)
    assert torch.equal(f, sae.encode(x)) and torch.equal(f, out.latents)
    assert_close(sae.decode(f, norm), out.x_hat)
    if normalization == "layer_norm":
        assert isinstance(norm, TokenNorm) and norm.mu.shape == norm.sigma.shape == (4, 5, 1)
        with pytest.raises(SaeVitError, match="return_norm=True"):
            sae.decode(f)
    else:
        assert norm is None
        assert_close(sae.decode(f), out.x_hat)


@pytest.mark.parametrize("normalization", ["layer_norm", "constant", "none"])
def test_decode_undoes_the_normalisation(normalization):
    """An SAE whose latents hold the normalised input exactly ([x_n, -x_n] through ReLU): decode(encode(x)) must
    give back x itself, in its own space, while the normalised-space decoder gives the normalised input."""
    cfg = SAEConfig(d_in=D_IN, d_sae=2 * D_IN, architecture="relu", k=None, l1_coefficient=1e-4,
                    normalization=normalization)
    sae = SAE(cfg)
    eye = torch.eye(D_IN)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.scale.fill_(0.25)
    x = acts((8, 3))
    f, norm = sae.encode(x, return_norm=True)
    xn = sae.decode_normalized(f)
    if normalization == "layer_norm":
        mu, sd = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        assert_close(xn, (x - mu) / (sd + 1e-5))
        assert_close(norm.mu, mu) and assert_close(norm.sigma, sd)
    elif normalization == "constant":
        assert_close(xn, 0.25 * x)
    # (x - mu) / (sd + eps) * sd + mu differs from x by |x - mu| * eps / sd, below 1e-4 for these inputs
    assert_close(sae.decode(f, norm), x, atol=1e-4)


# -- from_pretrained: every source kind ------------------------------------------------------------------------
def write_saelens(folder: Path, sae: SAE) -> Path:
    folder.mkdir(parents=True)
    cfg = {"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "k": 6,
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {"sae_lens_version": "6.21.0", "hook_name": "blocks.4.hook_resid_post", "model_name": "toy",
                        "hook_head_index": None, "seqpos_slice": [None], "prepend_bos": False}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({n: getattr(sae, n).detach().contiguous() for n in ("W_enc", "b_enc", "W_dec", "b_dec")},
              str(folder / "sae_weights.safetensors"))
    return folder


def write_sparsify(folder: Path, sae: SAE) -> Path:
    folder.mkdir(parents=True)
    cfg = {"expansion_factor": D_SAE // D_IN, "normalize_decoder": True, "num_latents": D_SAE, "k": 6,
           "multi_topk": False, "skip_connection": False, "transcode": False, "activation": "topk", "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({"encoder.weight": sae.W_enc.detach().T.contiguous(), "encoder.bias": sae.b_enc.detach().clone(),
               "W_dec": sae.W_dec.detach().contiguous(), "b_dec": sae.b_dec.detach().clone()},
              str(folder / "sae.safetensors"))
    return folder


def prisma_files(sae: SAE, layer: int = 4, l1: float = 8e-5) -> dict[str, bytes]:
    """config.json + n_images_2600058.pt as ViT-Prisma's released repos hold them (a ReLU, layer-norm SAE)."""
    import io

    buf = io.BytesIO()
    torch.save({n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}, buf)
    cfg = {"model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", "hook_point_layer": layer,
           "layer_subtype": "hook_resid_post", "d_in": D_IN, "d_sae": D_SAE, "expansion_factor": D_SAE // D_IN,
           "activation_fn_str": "relu", "activation_fn_kwargs": {}, "normalize_activations": "layer_norm",
           "cls_token_only": False, "use_patches_only": False, "l1_coefficient": l1, "architecture": "standard"}
    return {"config.json": json.dumps(cfg).encode(), "n_images_2600058.pt": buf.getvalue()}


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def our_bytes(sae: SAE, tmp_path: Path) -> bytes:
    path = sae.save(tmp_path / "scratch" / "sae.safetensors", overwrite=True)
    return path.read_bytes()


SOURCES = ["our file", "our folder", "saelens folder", "sparsify folder", "prisma folder", "prisma weights file",
           "hf:// ours", "hf:// prisma", "released name"]


@pytest.mark.parametrize("source", SOURCES)
def test_from_pretrained_round_trips(source, tmp_path, offline_hub):
    prisma_like = "prisma" in source or source == "released name"
    ref_sae = make_sae("relu", "layer_norm", seed=3) if prisma_like else make_sae("topk", "none", seed=2)
    if source == "our file":
        ref = ref_sae.save(tmp_path / "a.safetensors")
    elif source == "our folder":
        ref = ref_sae.save(tmp_path / "layer_4" / "all" / "sae.safetensors").parent
    elif source == "saelens folder":
        ref = write_saelens(tmp_path / "blocks.4.hook_resid_post", ref_sae)
    elif source == "sparsify folder":
        ref = write_sparsify(tmp_path / "layers.4", ref_sae)
    elif source == "prisma folder":
        ref = write_files(tmp_path / "prisma", prisma_files(ref_sae))
    elif source == "prisma weights file":
        ref = write_files(tmp_path / "prisma", prisma_files(ref_sae)) / "n_images_2600058.pt"
    elif source == "hf:// ours":
        lay_out_hub_cache(offline_hub, "me/saes", {"layer_4/all/sae.safetensors": our_bytes(ref_sae, tmp_path)})
        ref = "hf://me/saes/layer_4/all@main"
    elif source == "hf:// prisma":
        lay_out_hub_cache(offline_hub, "me/prisma-sae", prisma_files(ref_sae))
        ref = "hf://me/prisma-sae"
    else:
        from sae_vit.io.released import get_released

        row = get_released("clip-b32/resid_post/layer_11/l1-8e-05")
        lay_out_hub_cache(offline_hub, row.repo, prisma_files(ref_sae, layer=11))
        ref = row.name

    for loader in (SAE.from_pretrained, sae_vit.load_sae):
        sae = loader(ref)
        assert not sae.training and sae.W_enc.device.type == "cpu"
        assert (sae.cfg.architecture, sae.cfg.normalization, sae.cfg.d_sae) == (
            ref_sae.cfg.architecture, ref_sae.cfg.normalization, D_SAE)
        x = acts()
        expected, got = ref_sae(x), sae(x)
        assert_close(got.latents, expected.latents)
        assert_close(got.x_hat, expected.x_hat)
        f, norm = sae.encode(x, return_norm=True)
        assert_close(sae.decode(f, norm), expected.x_hat)
    if source == "released name":
        assert sae.cfg.layer == 11 and sae.cfg.model == "vit_base_patch32_clip_224.datacompxl"
        assert sae.cfg.training["source"].startswith(f"hf://{row.repo}@{COMMIT}")


def test_from_pretrained_errors_are_one_line(tmp_path):
    with pytest.raises(SaeVitError, match="does not exist") as info:
        SAE.from_pretrained(tmp_path / "missing.safetensors")
    assert "\n" not in str(info.value)
    with pytest.raises(SaeVitError, match="not a registered released SAE; did you mean clip-b32/resid_post/layer_8"):
        SAE.from_pretrained("clip-b32/resid_post/layer_08")
    with pytest.raises(SaeVitError, match="HF_HUB_OFFLINE"):
        SAE.from_pretrained("clip-b32/mlp_out/layer_3")  # registered, but not in this empty cache


def test_from_pretrained_without_the_resolver_names_the_fix(tmp_path, monkeypatch):
    from sae_vit.core import sae as core_sae

    monkeypatch.setattr(core_sae, "REF_RESOLVER", [])
    with pytest.raises(SaeVitError, match="from sae_vit import SAE"):
        core_sae.SAE.from_pretrained("hf://me/saes/layer_4/all")
    path = make_sae().save(tmp_path / "local.safetensors")
    assert torch.equal(core_sae.SAE.from_pretrained(path).W_dec, make_sae().W_dec)  # local files need no resolver
