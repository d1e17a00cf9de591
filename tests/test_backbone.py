import pytest
import torch

from sae_vit.core.backbone import load_backbone, read_state_dict, splice
from sae_vit.core.errors import SaeVitError
from sae_vit.core.sae import SAE, SAEConfig


def _images(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = backbone.model.patch_embed.img_size
    return torch.randn(n, 3, *size, generator=g)


def _sae(d_in, normalization="none", seed=0, k=8):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=4 * d_in, k=k, normalization=normalization))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.W_enc.mul_(3.0)
    return sae


def test_capture_shapes_and_early_stop(tiny_backbone):
    x = _images(tiny_backbone)
    out = tiny_backbone.capture(x, [1, 3], "resid_post", "all")
    assert out[1].shape == (3, 101, 64) and out[3].shape == (3, 101, 64)
    assert tiny_backbone.capture(x, [2], tokens="cls")[2].shape == (3, 1, 64)
    assert tiny_backbone.capture(x, [2], tokens="patches")[2].shape == (3, 100, 64)
    assert tiny_backbone.capture(x, [2], "mlp_hidden", "all")[2].shape == (3, 101, tiny_backbone.d_site("mlp_hidden"))
    # early stop: blocks after the deepest requested layer never run
    calls = []
    h = tiny_backbone.model.blocks[4].register_forward_hook(lambda *a: calls.append(1))
    tiny_backbone.capture(x, [3])
    h.remove()
    assert calls == []


def test_capture_matches_model_internals(tiny_backbone):
    x = _images(tiny_backbone)
    seen = {}
    m = tiny_backbone.model
    hs = [m.blocks[2].register_forward_hook(lambda _m, _i, o: seen.__setitem__("resid", o)),
          m.blocks[2].mlp.register_forward_hook(lambda _m, _i, o: seen.__setitem__("mlp_out", o))]
    with torch.no_grad():
        m(x)
    for h in hs:
        h.remove()
    torch.testing.assert_close(tiny_backbone.capture(x, [2])[2], seen["resid"])
    torch.testing.assert_close(tiny_backbone.capture(x, [2], "mlp_out")[2], seen["mlp_out"])


def test_forward_from_equals_full_forward(tiny_backbone):
    x = _images(tiny_backbone)
    with torch.no_grad():
        resid = tiny_backbone.capture(x, [2])[2]
        torch.testing.assert_close(tiny_backbone.forward_from(2, resid), tiny_backbone.model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["none", "layer_norm"])
@pytest.mark.parametrize("site", ["resid_post", "mlp_out"])
def test_identity_edit_changes_nothing(tiny_backbone, normalization, site):
    x = _images(tiny_backbone)
    sae = _sae(64, normalization)
    with torch.no_grad():
        ref = tiny_backbone.model(x)
        with splice(tiny_backbone, 3, lambda a: sae.edit(a, lambda f: f), site=site):
            out = tiny_backbone.model(x)
        # a plain SAE reconstruction (no error term) does change the output: the test can fail
        with splice(tiny_backbone, 3, lambda a: sae(a).x_hat, site=site):
            lossy = tiny_backbone.model(x)
    assert (out - ref).abs().max().item() < 1e-5
    assert (lossy - ref).abs().max().item() > 1e-3


def test_zeroing_a_latent_changes_residual_by_its_decoder_contribution(tiny_backbone):
    x = _images(tiny_backbone)
    sae = _sae(64)
    with torch.no_grad():
        resid = tiny_backbone.capture(x, [3])[3]
        f = sae.encode(resid)
        i = int((f > 0).sum(dim=(0, 1)).argmax())  # a latent that fires
        assert f[..., i].abs().sum() > 0

        def zero(lat):
            lat = lat.clone()
            lat[..., i] = 0
            return lat

        seen = {}
        with splice(tiny_backbone, 3, lambda a: sae.edit(a, zero)):
            # registered after the splice's hook, so it sees the edited residual
            h = tiny_backbone.model.blocks[3].register_forward_hook(lambda _m, _i, o: seen.__setitem__("x", o))
            tiny_backbone.model(x)
        h.remove()
        expected = resid - f[..., i : i + 1] * sae.W_dec[i]
    torch.testing.assert_close(seen["x"], expected, atol=1e-5, rtol=1e-5)


def test_splice_cls_only_leaves_patches(tiny_backbone):
    x = _images(tiny_backbone)
    seen = {}
    with torch.no_grad():
        base = tiny_backbone.capture(x, [1])[1]
        with splice(tiny_backbone, 1, lambda a: a + 1.0, tokens="cls"):
            h = tiny_backbone.model.blocks[1].register_forward_hook(lambda _m, _i, o: seen.__setitem__("x", o))
            tiny_backbone.model(x)
    h.remove()
    torch.testing.assert_close(seen["x"][:, 1:], base[:, 1:])
    torch.testing.assert_close(seen["x"][:, :1], base[:, :1] + 1.0)


def test_registers_excluded_from_tokens(tmp_path):
    from tests.conftest import save_random_vit

    path = save_random_vit("test_vit2", tmp_path / "v2.safetensors")  # one register token, no CLS
    bb = load_backbone("test_vit2", path)
    assert bb.n_prefix == 1 and not bb.has_cls
    assert bb.capture(_images(bb, 2), [0], tokens="patches")[0].shape == (2, 100, 64)
    with pytest.raises(SaeVitError, match="no CLS"):
        bb.token_positions("cls")


def test_real_clip_architecture_from_local_file(tmp_path):
    """The paper's base model architecture, random weights, through the user's --weights code path."""
    from tests.conftest import save_random_vit

    name = "vit_base_patch32_clip_224.datacompxl"
    path = save_random_vit(name, tmp_path / "clip_b32.safetensors")
    bb = load_backbone(name, path)
    assert (bb.n_layers, bb.d_model, bb.n_patches, bb.n_prefix) == (12, 768, 49, 1)
    x = _images(bb, 1)
    with torch.no_grad():
        acts = bb.capture(x, [8], tokens="all")[8]
        emb = bb.image_embedding(x)
    assert acts.shape == (1, 50, 768) and emb.shape == (1, 512)


def test_headless_timm_state_dict_loads(tmp_path):
    """A state dict saved from ``timm.create_model(name, num_classes=0)`` has no classifier, which activations
    never use: it loads, and the backbone computes what the headless model computes."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    headless = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    path = tmp_path / "headless.safetensors"
    save_file({k: v.contiguous() for k, v in headless.state_dict().items()}, str(path))
    bb = load_backbone("test_vit", path)
    x = _images(bb, 2)
    with torch.no_grad():
        last = bb.capture(x, [5])[5]
        torch.testing.assert_close(headless.norm(last), headless.forward_features(x))
        torch.testing.assert_close(bb.image_embedding(x), headless(x))
    assert last.shape == (2, 101, 64)


def test_pytorch_weights_read_with_weights_only(tmp_path, tiny_vit):
    state = read_state_dict(tiny_vit[1])
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": state}, pt)
    bb = load_backbone("test_vit", pt)
    assert bb.weights_id

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(SaeVitError, match="Could not read weights"):
        read_state_dict(bad)


def test_bad_model_inputs(tmp_path, tiny_vit):
    with pytest.raises(SaeVitError, match="Unknown model"):
        load_backbone("not_a_model_name")
    with pytest.raises(SaeVitError, match="does not exist"):
        load_backbone("test_vit", tmp_path / "missing.safetensors")
    with pytest.raises(SaeVitError, match="does not match"):
        load_backbone("vit_base_patch32_clip_224", tiny_vit[1])
    bb = load_backbone(*tiny_vit)
    with pytest.raises(SaeVitError, match="out of range"):
        bb.capture(_images(bb, 1), [6])


def test_hub_weights_offline_fail_at_once_with_one_line(monkeypatch):
    """A non-ViT is refused before any download; a ViT whose weights are not in the local Hub cache fails with one
    line under the Hub guard (no retries) instead of timm's own download loop."""
    import sae_vit.io.hub  # noqa: F401 - installs the guard, as every command does
    from sae_vit.core.backbone import HUB_GUARD, load_backbone
    from sae_vit.core.errors import SaeVitError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hub-cache")
    assert HUB_GUARD
    with pytest.raises(SaeVitError, match="not a timm VisionTransformer"):
        load_backbone("resnet18", device="cpu")
    with pytest.raises(SaeVitError, match="Could not fetch weights for vit_tiny_patch16_224"):
        load_backbone("vit_tiny_patch16_224", device="cpu")
