"""The TF-free TFDS builder of a video folder: prepared from a folder made here,
read back through ``as_data_source``, selected with ``data.name=tfds``."""

import os

import numpy as np
import pytest

import video_files
from data_pipelines import tfds_video_folder
from data_pipelines import video_decode
from data_pipelines import video_folder
from data_pipelines import input_pipeline

SAMPLING = video_decode.FrameSampling(4, 16)
FAMILIES = ("colour", "motion")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = video_files.make_folder(str(tmp_path_factory.mktemp("videos")))
    bad = video_files.write_bad_files(os.path.join(root, "clips"))
    train = video_files.write_jsonl(os.path.join(root, "train.jsonl"), video_files.qa_entries(7) + [
        dict(video=f"clips/{bad['not_a_video']}", question="q", answer="a", family="motion"),
        dict(video="clips/absent.mp4", question="q", answer="a")])
    eval_ = video_files.write_jsonl(os.path.join(root, "eval.jsonl"), video_files.qa_entries(4))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds_video_folder.VideoFolderQa(
        root=root, train_annotations=train, eval_annotations=eval_, data_dir=data_dir)
    builder.download_and_prepare()
    return root, train, eval_, data_dir


def test_prepared_splits_and_metadata(prepared):
    _, _, _, data_dir = prepared
    builder = tfds_video_folder.builder(tfds_video_folder.NAME, data_dir)  # no root: reads
    assert builder.is_prepared()
    assert {s: builder.info.splits[s].num_examples for s in ("train", "eval")} == dict(
        train=8, eval=4)
    assert list(builder.info.metadata["families"]) == list(FAMILIES)
    assert dict(builder.info.metadata["bad"]["train"]) == {"missing_video": 1}


def test_tfds_examples_are_the_folder_examples(prepared):
    root, train, _, data_dir = prepared
    folder = video_folder.VideoFolderSource(root, train, sampling=SAMPLING, families=FAMILIES,
                                            split="eval")
    builder = tfds_video_folder.builder(tfds_video_folder.NAME, data_dir)
    source = tfds_video_folder.TfdsVideoSource(
        builder.as_data_source(split="train"), sampling=SAMPLING, families=FAMILIES,
        split="eval")
    assert len(source) == len(folder) == 8
    # TFDS stores examples in its own (hashed) order: match them by annotation line.
    by_line = {r.where: folder[i] for i, r in enumerate(folder.records)}
    errors = []
    for i in range(len(source)):
        got = source[i]
        want = by_line[builder.as_data_source(split="train")[i]["where"].decode()]
        for k in ("frames", "frame_mask", "question", "answer", "family", "input_error"):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        errors.append(got["input_error"])
    assert sorted(errors)[-1] == input_pipeline.INPUT_ERRORS.index("not_a_video")


def test_tfds_selected_from_the_config_trains_a_batch(prepared):
    from configs import short_video
    from frejax import config_lib
    from data_pipelines import datasets as data_lib

    _, _, _, data_dir = prepared
    config = short_video.get_config("smoke")
    config.data.update(name="tfds", tfds_name=tfds_video_folder.NAME, tfds_dir=data_dir,
                       max_text_len=48, max_answer_len=4, max_bad_fraction=0.2)
    config.eval.max_new_tokens = 4
    config_lib.validate(config)
    assert data_lib.family_names(config) == FAMILIES
    tok = data_lib.make_tokenizer(config)
    source = data_lib.make_source(config, "train", 0)
    ds = input_pipeline.make_dataset(
        source, tokenizer=tok, global_batch_size=4, max_text_len=48, max_answer_len=4,
        split="train", seed=0, max_bad_fraction=0.2)
    batch = next(iter(ds))
    assert batch["frames"].shape == (4, 8, 32, 32, 3) and batch["tokens"].shape == (4, 48)


def test_tfds_prepares_from_the_folder_on_first_use(prepared, tmp_path):
    from configs import short_video
    from data_pipelines import datasets as data_lib

    root, train, eval_, _ = prepared
    config = short_video.get_config("smoke")
    config.data.update(name="tfds", tfds_name=tfds_video_folder.NAME,
                       tfds_dir=str(tmp_path / "fresh"), root=root,
                       train_annotations=train, eval_annotations=eval_)
    assert len(data_lib.make_source(config, "eval", 100)) == 4
    config.data.update(root="", tfds_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data_lib.make_source(config, "eval", 100)
