"""DINOv2 import: parity with ``transformers``' ``Dinov2Model`` / ``Dinov2WithRegistersModel``
on tiny random models (float32), and the bicubic position-table resize against
``torch.nn.functional.interpolate``. torch and transformers are test requirements:
missing, these tests fail (never skip).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from frejax.models.convert import hf_configs
from frejax.models.convert import param_maps
from frejax.models.convert import tensor_sources
from frejax.models.vit import ViT, normalize_pixels
from test_hf_import import ATOL, _jitted, _load_module, _save, _torch, _vision_section


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size,out", [((37, 37), (16, 16)), ((4, 6), (9, 5)), ((8, 8), (8, 8))])
def test_bicubic_resize_matches_torch(size, out, antialias):
    torch = _torch()
    grid = np.random.default_rng(0).normal(size=size + (3,)).astype(np.float32)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(grid).permute(2, 0, 1)[None], size=out, mode="bicubic",
        align_corners=False, antialias=antialias)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(tensor_sources.resize_bicubic(grid, out, antialias), theirs,
                               atol=1e-5, rtol=0)


def _dinov2(kind, **kw):
    from transformers import (Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,  # noqa: PLC0415
                              Dinov2WithRegistersModel)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                  patch_size=4, image_size=24, layerscale_value=0.5, attn_implementation="eager")
    common.update(kw)
    if kind == "registers":
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=3,
                                                                   **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    # Random (not default-initialised) class token, registers, positions and layer scales,
    # so a mapping that drops or swaps one cannot pass.
    torch = _torch()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("cls_token", "register_tokens", "position_embeddings",
                                       "lambda1")):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "lambda1" in name else 0.0))
    return model.eval()


@pytest.mark.parametrize("kind,image_size", [("plain", 24), ("plain", 32), ("plain", 16),
                                             ("registers", 32)])
def test_dinov2_matches_transformers(tmp_path, kind, image_size):
    """Patch tokens of ``last_hidden_state``; 32 px interpolates the 6x6 table to 8x8, 16 px
    shrinks it to 4x4 (with antialiasing for the registers model, as transformers does)."""
    torch = _torch()
    reference = _dinov2(kind)
    folder = _save(reference, tmp_path / "dinov2", sharded=False)
    keys = hf_configs.vision_config_from_hf(folder.config)
    assert "image_size" not in keys and keys["cls_token"] and keys["layer_scale"]
    vit = ViT(_vision_section(dict(keys, image_size=image_size)), rngs=nnx.Rngs(0))
    side = image_size // 4
    vit = _load_module(vit, folder, param_maps.vision_param_map(folder, (side, side)))
    images = np.random.default_rng(2).integers(0, 256, (2, image_size, image_size, 3),
                                               dtype=np.uint8)
    ours = np.asarray(_jitted(vit, ViT.encode_images)(jnp.asarray(images)))
    pixels = np.asarray(normalize_pixels(jnp.asarray(images), "imagenet")).transpose(0, 3, 1, 2)
    with torch.no_grad():
        out = reference(pixel_values=torch.tensor(pixels)).last_hidden_state.numpy()
    skip = 1 + (3 if kind == "registers" else 0)
    assert ours.shape == (2, side * side, 32)
    np.testing.assert_allclose(ours, out[:, skip:], atol=ATOL, rtol=0)


def test_dinov2_config_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="use_swiglu_ffn"):
        hf_configs.vision_config_from_hf(dict(model_type="dinov2", use_swiglu_ffn=True))
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        hf_configs.vision_config_from_hf(dict(model_type="dinov2", hidden_act="relu"))
