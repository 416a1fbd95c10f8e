"""ArrayRecord shards: the converter command, the Grain reader, and the same
examples (and batches) as reading the video folder directly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import video_files
from data_pipelines import array_record_shards
from data_pipelines import video_decode
from data_pipelines import video_folder
from data_pipelines import input_pipeline
from data_pipelines import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLING = video_decode.FrameSampling(4, 16)
FAMILIES = ("colour", "motion")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A folder with good and broken inputs, converted by the documented command."""
    root = video_files.make_folder(str(tmp_path_factory.mktemp("videos")))
    bad = video_files.write_bad_files(os.path.join(root, "clips"))
    conversation = {"id": "c", "video": "clips/mpeg4.mkv", "family": "motion", "conversations": [
        {"from": "human", "value": "<video>\nwhat is shown"}, {"from": "gpt", "value": "colours"},
        {"from": "human", "value": "how many"}, {"from": "gpt", "value": "twenty"}]}
    train = video_files.write_jsonl(os.path.join(root, "train.jsonl"), video_files.qa_entries(9) + [
        conversation,
        dict(video=f"clips/{bad['corrupt_video']}", question="q", answer="a", family="colour"),
        "{not json", dict(video="clips/absent.mp4", question="q", answer="a")])
    eval_ = video_files.write_jsonl(os.path.join(root, "eval.jsonl"), video_files.qa_entries(5))
    out = str(tmp_path_factory.mktemp("shards"))
    cmd = [sys.executable, "-m", "data_pipelines.array_record_shards", f"--root={root}",
           f"--train_annotations={train}", f"--eval_annotations={eval_}", f"--output={out}",
           "--num_shards=3"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: 12 examples in 3 shards (2 records skipped" in done.stdout
    assert "12/12" in done.stderr  # the progress bar ran to the end
    return root, train, eval_, out


def test_converter_writes_shards_and_metadata(converted):
    _, _, _, out = converted
    assert [os.path.basename(p) for p in array_record_shards.shard_paths(out, "train")] == [
        f"train-{k:05d}-of-00003.array_record" for k in range(3)]
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["families"] == list(FAMILIES)
    assert meta["splits"]["train"]["bad"] == {"malformed_json": 1, "missing_video": 1}
    assert meta["splits"]["train"]["num_entries"] == 13
    assert meta["splits"]["eval"]["num_examples"] == 5
    assert {"twenty", "shape", "second"} <= set(meta["words"])


@pytest.mark.parametrize("split", ["train", "eval"])
def test_shards_give_the_same_examples_as_the_folder(converted, split):
    root, train, eval_, out = converted
    folder = video_folder.VideoFolderSource(root, train if split == "train" else eval_,
                                            sampling=SAMPLING, families=FAMILIES, split=split)
    shards = array_record_shards.ArrayRecordVideoSource(out, split, sampling=SAMPLING,
                                                        families=FAMILIES)
    assert len(shards) == len(folder)
    for i in range(len(folder)):
        a, b = folder[i], shards[i]
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} of example {i}")
    if split == "train":
        assert any(folder[i]["input_error"] for i in range(len(folder)))  # the corrupt one
        assert any(folder[i]["history"] for i in range(len(folder)))  # a multi-turn one


def test_training_batches_from_shards_equal_those_from_the_folder(converted):
    root, train, _, out = converted
    folder = video_folder.VideoFolderSource(root, train, sampling=SAMPLING, families=FAMILIES,
                                            split="train")
    shards = array_record_shards.ArrayRecordVideoSource(out, "train", sampling=SAMPLING,
                                                        families=FAMILIES)
    tok = tokenizer_lib.word_tokenizer_for(
        json.load(open(os.path.join(out, "metadata.json")))["words"])

    def batches(source):
        ds = input_pipeline.make_dataset(
            source, tokenizer=tok, global_batch_size=4, max_text_len=48, max_answer_len=4,
            split="train", seed=3, max_bad_fraction=0.2)
        it = iter(ds)
        return [next(it) for _ in range(4)]  # past one epoch: reshuffled

    for x, y in zip(batches(folder), batches(shards)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_array_record_selected_from_the_config(converted):
    from configs import short_video
    from frejax import config_lib
    from data_pipelines import datasets as data_lib

    root, train, eval_, out = converted
    config = short_video.get_config("smoke")
    config.data.update(name="video_folder", root=root, train_annotations=train,
                       eval_annotations=eval_, max_bad_fraction=0.2)
    from_folder = (data_lib.family_names(config), data_lib.make_tokenizer(config).vocab)
    config.data.update(name="array_record", root=out, train_annotations="", eval_annotations="")
    config_lib.validate(config)
    assert (data_lib.family_names(config), data_lib.make_tokenizer(config).vocab) == from_folder
    source = data_lib.make_source(config, "eval", 3)
    assert isinstance(source, array_record_shards.ArrayRecordVideoSource) and len(source) == 3
    assert source[0]["frames"].shape == (8, 32, 32, 3)
    config.data.max_bad_fraction = 0.1  # 2 of 13 records were unusable
    with pytest.raises(input_pipeline.BadInputError, match="2 of 13 annotation records"):
        data_lib.make_source(config, "train", 0)
