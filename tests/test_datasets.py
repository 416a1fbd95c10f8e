"""data_pipelines.datasets: config to sources, tokenizer, text lengths and batches."""

import os

import jax
import pytest

import video_files
from configs import short_video
from data_pipelines import datasets, input_pipeline, video_qa_synthetic
from frejax import sharding


def _mc_entries(n):
    """Four-option multiple-choice questions of growing length (the case that used to be cut)."""
    out = []
    for i in range(n):
        clip = f"clips/{video_files.CLIPS[i % len(video_files.CLIPS)][0]}"
        words = " ".join(["very"] * (i % 7))
        out.append(dict(video=clip, question=f"which {words} long option fits clip {i}",
                        options=[f"the {words} first", "second", "a third one", "fourth"],
                        answer="ABCD"[i % 4], family="choice"))
    return out


@pytest.fixture(scope="module")
def folder_config(tmp_path_factory):
    root = video_files.make_folder(str(tmp_path_factory.mktemp("mc")))
    train = video_files.write_jsonl(os.path.join(root, "train.jsonl"), _mc_entries(24))
    eval_ = video_files.write_jsonl(os.path.join(root, "eval.jsonl"), _mc_entries(16)[::-1])
    config = short_video.get_config("smoke")
    config.data.update(name="video_folder", root=root, train_annotations=train,
                       eval_annotations=eval_)
    config.eval.update(max_new_tokens=2, num_examples=16)
    return config


def test_synthetic_text_lengths_are_the_benchmarks():
    config = short_video.get_config()
    tok = datasets.make_tokenizer(config)
    assert datasets.text_lengths(config, tok) == (video_qa_synthetic.MAX_TEXT_LEN,
                                                  video_qa_synthetic.MAX_ANSWER_LEN)


def test_folder_text_lengths_fit_every_record_and_drop_nothing(folder_config):
    config = folder_config
    tok = datasets.make_tokenizer(config)
    text, answer = datasets.text_lengths(config, tok)
    assert text > 32 and answer == 1  # the old fixed 32 cut the longest questions
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        batches = list(datasets.make_eval_iterator(config, tok, mesh))
    errors = [int(e) for b in batches for e, v in zip(b["input_error"], b["example_valid"])
              if v or e]
    assert len(errors) == 16 and not any(errors)
    assert batches[0]["tokens"].shape[1] == text
    # The longest record uses every position: the length is tight, not just enough.
    assert max(int(b["text_mask"].sum(1).max()) for b in batches) == text
    texts = [dict(question=e["question"], answer=e["answer"]) for e in _mc_entries(1)]
    assert input_pipeline.text_lengths(tok, texts, config.data.prompt_template)[0] < text


def test_an_explicit_length_wins(folder_config):
    config = folder_config.copy_and_resolve_references()
    config.data.max_text_len = 20
    tok = datasets.make_tokenizer(config)
    assert datasets.text_lengths(config, tok)[0] == 20


def test_answers_longer_than_max_new_tokens_fail_naming_the_key(folder_config):
    config = folder_config.copy_and_resolve_references()
    config.data.max_answer_len = 3
    with pytest.raises(ValueError, match=r"config\.eval\.max_new_tokens \(2\) must be >="):
        datasets.text_lengths(config, datasets.make_tokenizer(config))


def test_shard_sources_need_explicit_lengths():
    config = short_video.get_config("smoke")
    config.data.update(name="array_record", root="unused")
    with pytest.raises(ValueError, match=r"config\.data\.max_text_len and"):
        datasets.text_lengths(config, video_qa_synthetic.tokenizer())
