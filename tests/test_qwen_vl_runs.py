"""Qwen2.5-VL through frejax's own model, ``benchmark_eval`` and ``main``: a tiny random
folder (``configs/qwen2_5_vl.py:qwen=<folder>``), compressed after the merger, on one device
and on a 2 x 2 mesh."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import benchmark_fixtures as fx
import llava_fixtures
import video_files
from configs import qwen2_5_vl
from frejax import config_lib
from frejax.inference import benchmark_eval
from frejax.models import qwen_vl
from frejax.models.convert import hf_import, qwen_vl_import
from frejax.models.video_mllm import VideoMLLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, FRAMES, SIZE = 300, 4, 56


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                           patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
                           window_size=56, out_hidden_size=32, fullatt_block_indexes=[1],
                           tokens_per_second=2),
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters=dict(rope_type="default", rope_theta=10_000.0,
                                              mrope_section=[1, 1, 2]),
                         max_position_embeddings=1024),
        video_token_id=VOCAB - 1, image_token_id=VOCAB - 2, tie_word_embeddings=False)
    model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.normal_(1.0, 0.1)
            elif p.ndim == 1:
                p.normal_(0, 0.3)
            else:
                p.normal_(0, 1.5 * int(np.prod(p.shape[1:])) ** -0.5)
    folder = str(tmp_path_factory.mktemp("qwen"))
    model.save_pretrained(folder)
    llava_fixtures.write_byte_tokenizer(folder)
    return folder


def _config(folder, compressor="full", ratio=1.0, **extra):
    args = ",".join([f"qwen={folder}", f"compressor={compressor}", f"ratio={ratio}",
                     f"frames={FRAMES}", f"size={SIZE}"] + [f"{k}={v}" for k, v in extra.items()])
    return qwen2_5_vl.get_config(args)


def _model(config):
    config_lib.validate(config)
    model = VideoMLLM(config.model, config.compressor, num_frames=FRAMES, vocab_size=VOCAB,
                      video_token_id=VOCAB - 1, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, hf_import.load_pretrained(config, nnx.to_pure_dict(state)))
    nnx.update(model, state)
    return model


def _matches_imported(folder, seed):
    """VideoMLLM (one placeholder, text-aligned logits) against QwenVL (the spliced prompt,
    its own positions), uncompressed and under EVS: asserts the same numbers; returns each
    case's (model, batch, the reference's logits, visual tokens)."""
    step = float(_config(folder).model.vision.mrope_time_step)
    reference = qwen_vl_import.load(folder)
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.integers(0, 255, (1, FRAMES, SIZE, SIZE, 3)), jnp.uint8)
    patches = qwen_vl.patchify(qwen_vl.normalize(frames), reference.encoder.cfg)
    text = [5, 6, VOCAB - 1, 7, 8, 9]
    out = []
    for compressor, ratio in (("full", 1.0), ("evs", 2.0)):
        model = _model(_config(folder, compressor, ratio))
        m = model.num_visual_tokens
        batch = dict(frames=frames, frame_mask=jnp.ones((1, FRAMES), bool),
                     tokens=jnp.asarray([text]), text_mask=jnp.ones((1, 6), bool))
        got = np.asarray(model(batch))
        spliced = jnp.asarray([text[:2] + [VOCAB - 1] * m + text[3:]])
        comp = None if compressor == "full" else model.compressor
        want = np.asarray(reference(spliced, patches, (SIZE // 14, SIZE // 14), interval=step,
                                    compressor=comp))
        # Text-aligned: the placeholder predicts from the last visual token.
        rows = [0, 1, 2 + m - 1, 2 + m, 3 + m, 4 + m]
        np.testing.assert_allclose(got[0], want[0, rows], atol=1e-4, rtol=1e-4)
        out.append((model, batch, want, m))
    return out


def test_the_framework_model_computes_what_the_imported_qwen_computes(qwen):
    """Qwen2.5-VL: the same numbers as the imported model, uncompressed and under EVS."""
    config = _config(qwen)
    assert config.model.vision.family == "qwen2_5_vl"
    assert config.model.vision.mrope_time_step == 2.0            # 2 tokens/s, 1 s per patch
    _matches_imported(qwen, seed=0)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """A tiny random Qwen3-VL folder with two DeepStack mergers."""
    torch.manual_seed(0)
    cfg = transformers.Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                           patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
                           out_hidden_size=32, num_position_embeddings=16,
                           deepstack_visual_indexes=[0, 1]),
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=1024,
                         rope_parameters=dict(rope_type="default", rope_theta=10_000.0,
                                              mrope_section=[2, 1, 1], mrope_interleaved=True)),
        video_token_id=VOCAB - 1, image_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3,
        vision_end_token_id=VOCAB - 4, tie_word_embeddings=False)
    model = transformers.Qwen3VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            elif p.ndim == 1:
                p.normal_(0, 0.3)
            elif "pos_embed" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 1.5 * int(np.prod(p.shape[1:])) ** -0.5)
    folder = str(tmp_path_factory.mktemp("qwen3"))
    model.save_pretrained(folder)
    llava_fixtures.write_byte_tokenizer(folder)
    return folder


def test_the_framework_model_computes_what_the_imported_qwen3_computes(qwen3):
    """Qwen3-VL inside VideoMLLM: DeepStack features through the compressor with the merged
    tokens and into the LLM's first layers, in training's splice and in the cached prefill;
    the same numbers as the imported model, uncompressed and under EVS."""
    config = _config(qwen3)
    assert config.model.vision.family == "qwen3_vl" and tuple(config.model.vision.deepstack)
    for model, batch, want, m in _matches_imported(qwen3, seed=1):
        # The cached prefill (what predict and benchmark_eval run) reads DeepStack too:
        # its first token is the reference's greedy token after the prompt.
        text = batch["tokens"][0].tolist()
        visual = model.encode_video(batch)
        cache, position = model.prefill_video(visual, jnp.asarray([text[:2]]), 2 + m + 8)
        _, token = model.prefill_text(cache, position, jnp.asarray([2 + m]),
                                      jnp.asarray([text[3:]]), jnp.asarray([3]))
        assert int(token[0]) == int(want[0, -1].argmax())


def test_benchmark_eval_runs_qwen_with_a_compressor_alike_on_a_mesh(tmp_path, qwen):
    data, _ = fx.videomme_folder(str(tmp_path / "data"))
    runs = []
    for mesh in ((1, 1, 1), (2, 1, 2)):
        c = _config(qwen, "evs", 2.0)
        c.mesh.shape, c.eval.batch_size = mesh, 2
        runs.append(benchmark_eval.run(c, "videomme", data, str(tmp_path / f"out{mesh[0]}")))
    one, two = runs
    # 2 temporal patches of 2 x 2 merged tokens; EVS keeps half.
    assert (one["row"]["full_visual_tokens_per_video"], one["row"]["visual_tokens_per_video"]) \
        == (8, 4)
    assert one["row"]["answered"] == len(one["samples"]) > 0
    assert [s["resps"] for s in one["samples"]] == [s["resps"] for s in two["samples"]]


@pytest.mark.parametrize("name", sorted(set(fx.FOLDERS) - {"videomme"}))
def test_benchmark_eval_scores_every_standard_benchmark_with_qwen(tmp_path, qwen, name):
    data, _ = fx.FOLDERS[name](str(tmp_path / "data"))
    c = _config(qwen, "uniform_frames", 2.0)
    c.mesh.shape, c.eval.batch_size = (1, 1, 1), 2
    out = benchmark_eval.run(c, name, data, str(tmp_path / "out"))
    assert out["row"]["answered"] == len(out["samples"]) > 0
    assert out["row"]["visual_tokens_per_video"] == 4


@pytest.mark.parametrize("lora, meshes", [(4, ((-1, 1, 1), (2, 2, 2))), (0, ((2, 2, 2),))])
def test_main_fine_tunes_qwen_on_a_video_folder(tmp_path, qwen, lora, meshes):
    from frejax.training import train  # noqa: PLC0415

    folder = video_files.make_folder(str(tmp_path / "videos"))
    video_files.write_jsonl(f"{folder}/train.jsonl", video_files.qa_entries(8))
    video_files.write_jsonl(f"{folder}/eval.jsonl", video_files.qa_entries(4))
    losses = []
    # Training takes every device: data parallel over all 8, against a 2 x 2 x 2 mesh
    # whose fsdp and tensor axes split the tower and the LLM (LoRA on both; full
    # fine-tuning, the same step with more trained params, on the sharded mesh).
    for mesh in meshes:
        c = _config(qwen, "fre_res_frames", 2.0, data=str(folder), lora=lora, steps=2)
        c.mesh.shape = mesh
        c.train.update(batch_size=8, log_every=1)
        c.eval.update(batch_size=8, num_examples=4)
        workdir = tmp_path / f"w{mesh[1]}"
        results = train.train_and_evaluate(c, str(workdir))
        assert results["num_examples"] == 4
        lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        losses.append([x["train/loss"] for x in lines if "train/loss" in x])
    assert len(losses[0]) == 2 and np.isfinite(losses[0]).all()
    for other in losses[1:]:
        np.testing.assert_allclose(losses[0], other, rtol=1e-4)


def test_the_7b_shape_has_transformers_parameter_count():
    """``shape=7b`` (what the ahead-of-time compile checks) is Qwen2.5-VL-7B: every
    parameter transformers builds for that config.json, counted without allocating."""
    from configs import common  # noqa: PLC0415

    config = qwen2_5_vl.get_config("shape=7b")
    config_lib.validate(config)
    abstract = nnx.eval_shape(lambda: VideoMLLM(
        config.model, config.compressor, num_frames=config.data.num_frames,
        vocab_size=config.model.llm.vocab_size, video_token_id=0, rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in
               jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    with torch.device("meta"):
        hf = transformers.Qwen2_5_VLForConditionalGeneration(
            transformers.Qwen2_5_VLConfig(**common.QWEN2_5_VL_7B))
    assert ours == sum(p.numel() for p in hf.parameters()) > 8e9
