"""``frejax.inference.benchmark_eval`` end to end: a tiny random LLaVA-OneVision folder, each benchmark's
fixture files, a training-free compressor; the report, the samples log, the token cache,
and the same answers on one device and on a 2 x 2 mesh."""

import json
import os

import pytest

import benchmark_fixtures as fx
import llava_fixtures
from configs import llava_onevision
from data_pipelines import video_benchmarks
from frejax.inference import benchmark_eval


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("llava"))
    llava_fixtures.tiny_llava(folder, tokenizer=True)
    return folder


def _config(folder, compressor="fre_res_frames", ratio=1.5, mesh=(1, 1, 1)):
    c = llava_onevision.get_config(f"llava={folder},compressor={compressor},ratio={ratio},"
                                   "frames=3")
    c.mesh.shape = mesh
    c.eval.batch_size = 2
    return c


@pytest.mark.parametrize("name", sorted(fx.FOLDERS))
def test_each_benchmark_end_to_end(tmp_path, llava, name):
    data, _ = fx.FOLDERS[name](str(tmp_path / "data"))
    out = benchmark_eval.run(_config(llava), name, data, str(tmp_path / "out"), seed=0)
    row, samples = out["row"], out["samples"]
    task = video_benchmarks.get(name)
    docs = task.load(data)
    assert row["questions"] == row["answered"] == len(samples) == len(docs)
    assert row["videos"] == row["videos_encoded"] == len({d.video for d in docs})
    # 3 frames of a 3 x 3 pooled grid + the newline; fre_res_frames at 1.5x keeps 2 frames.
    assert (row["full_visual_tokens_per_video"], row["visual_tokens_per_video"],
            row["visual_tokens_used_per_video"]) == (28, 19, 19)
    assert [s["arguments"][0] for s in samples] == [task.doc_to_text(d) for d in docs]
    assert all(s["arguments"][1]["max_new_tokens"] == task.MAX_NEW_TOKENS for s in samples)
    # The report's score is the benchmark's aggregate of the logged per-sample values.
    assert task.aggregate([s[task.METRIC] for s in samples])["score"] == row["score"]
    assert set(row["timing"]) >= {"encode_s", "prefill_s", "ttft_s_per_batch", "decode_s"}
    with open(out["report"]) as f:
        assert json.load(f)["score"] == row["score"]
    lines = open(out["report"].replace(".json", "_samples.jsonl")).read().splitlines()
    assert len(lines) == len(docs)


def test_a_video_asked_several_questions_is_encoded_once(tmp_path, llava):
    data, _ = fx.videomme_folder(str(tmp_path / "data"))
    path = os.path.join(data, "videomme", "test-00000-of-00001.parquet")
    records = [dict(r, videoID=f"vid{i // 2}") for i, r in
               enumerate(video_benchmarks.base.read_records(path))]  # 5 questions, 3 videos
    fx.write_parquet(path, records)
    config = _config(llava)
    config.eval.batch_size = 1  # each question its own batch: the cache serves the second
    row = benchmark_eval.run(config, "videomme", data, str(tmp_path / "out"))["row"]
    assert (row["answered"], row["videos"], row["videos_encoded"]) == (5, 3, 3)


def test_same_answers_on_one_device_and_a_mesh(tmp_path, llava):
    data, _ = fx.videomme_folder(str(tmp_path / "data"))
    one = benchmark_eval.run(_config(llava, compressor="full", ratio=1.0), "videomme", data,
                             str(tmp_path / "a"))
    mesh = benchmark_eval.run(_config(llava, compressor="full", ratio=1.0, mesh=(2, 1, 2)),
                              "videomme", data, str(tmp_path / "b"))
    assert mesh["row"]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert [s["resps"] for s in one["samples"]] == [s["resps"] for s in mesh["samples"]]
    assert one["row"]["score"] == mesh["row"]["score"]


def test_missing_videos_are_counted_skips(tmp_path, llava):
    data, _ = fx.videomme_folder(str(tmp_path / "data"))
    os.remove(os.path.join(data, "data", "vid1.mp4"))
    with open(os.path.join(data, "data", "vid2.mp4"), "wb") as f:
        f.write(b"not a video")
    row = benchmark_eval.run(_config(llava), "videomme", data, str(tmp_path / "out"))["row"]
    assert row["answered"] == 3 and row["skipped"] == {"unreadable_file": 1, "not_a_video": 1}


def test_learned_compressor_needs_a_checkpoint(tmp_path, llava):
    data, _ = fx.videomme_folder(str(tmp_path / "data"))
    with pytest.raises(ValueError, match="compressor 'fre_res' has learned parameters"):
        benchmark_eval.run(_config(llava, compressor="fre_res", ratio=1.5), "videomme", data,
                           str(tmp_path / "out"))


def test_cli_with_a_frejax_checkpoint(tmp_path):
    """The command line end to end on a frejax-trained checkpoint (its own tokenizer and
    template), with a learned compressor (fre_res) that the checkpoint holds."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from configs import short_video  # noqa: PLC0415
    from test_predict import _save_checkpoint  # noqa: PLC0415

    config = short_video.get_config("smoke")
    _save_checkpoint(str(tmp_path / "run"), config, step=2)
    data, _ = fx.videomme_folder(str(tmp_path / "data"))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run(
        [sys.executable, "-m", "frejax.inference.benchmark_eval", "--config=configs/short_video.py:smoke",
         f"--checkpoint={tmp_path / 'run'}", "--benchmark=videomme", f"--data={data}",
         f"--out={tmp_path / 'out'}", "--batch_size=2", "--sampling=uniform", "--resize=crop"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "videomme videomme_perception_score:" in out.stdout
    with open(tmp_path / "out" / "videomme__fre_res__r8.json") as f:
        row = json.load(f)
    assert row["answered"] == 5 and row["compressor"] == "fre_res"
    assert row["command"].startswith("python -m frejax.inference.benchmark_eval --config=")
