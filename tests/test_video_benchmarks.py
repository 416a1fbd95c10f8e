"""The standard video benchmarks: reading each released format, lmms-eval's prompts, and every
answer-extraction rule on hand-written model outputs, scored against figures worked out by
hand in the comments."""

import json
import random

import pytest

import benchmark_fixtures as fx
from data_pipelines import video_benchmarks
from data_pipelines.video_benchmarks import (egoschema, longvideobench, mvbench, nextqa,
                                             videomme)


def _score(task, docs, preds, seed=0):
    rng = random.Random(seed)
    values = [task.process(d, p, rng) for d, p in zip(docs, preds, strict=True)]
    return values, task.aggregate(values)


def test_mvbench_reads_json_and_drops_empty_predictions(tmp_path):
    root, preds = fx.mvbench_folder(str(tmp_path))
    docs = mvbench.load(root)
    assert len(docs) == 8 and all(__import__("os").path.isfile(d.video) for d in docs)
    assert mvbench.doc_to_text(docs[0]) == (
        "Question:What does the person do?\nOption:\n(A) walk\n(B) run\n(C) jump\n"
        "Only give the best option.\n")
    values, agg = _score(mvbench, docs, preds)
    # action_sequence (gt B): "(B) run" -> B right; "B." -> B right; "" leaves the
    # denominator; "I think a man runs" -> the word "a" reads as A, wrong; "C. jump" -> C.
    assert [v["score"] for v in values[:5]] == [1, 1, 0, 0, 0]
    # object_existence (gt B): "B" right, "no" stays "no" (wrong), "(B)" right.
    assert [v["score"] for v in values[5:]] == [1, 0, 1]
    assert agg["per_category"]["action_sequence"] == 50.0  # 2 of 4 answered
    assert agg["per_category"]["object_existence"] == pytest.approx(200 / 3)
    assert agg["score"] == pytest.approx((50.0 * 5 + 200 / 3 * 3) / 8)  # 56.25, size-weighted
    assert agg["unanswered"] == 1


def test_mvbench_normalise_rules():
    assert mvbench.normalise("b. something") == "B"
    assert mvbench.normalise("(e)") == "E"
    assert mvbench.normalise("1.5 apples") == "1.5 apples"  # digits keep their period
    assert mvbench.normalise("F") == "f"  # outside A-E: cleaned text


def test_videomme_reads_parquet_and_extracts_the_first_letter(tmp_path):
    root, preds = fx.videomme_folder(str(tmp_path))
    docs = videomme.load(root)
    assert [d.video.endswith(f"data/vid{i}.mp4") for i, d in enumerate(docs)] == [True] * 5
    text = videomme.doc_to_text(docs[0])
    assert text.startswith("Select the best answer to the following multiple-choice question")
    assert text.endswith("Which animal appears?\nA. cat\nB. dog\nC. bird\nD. fish\n\n"
                         "Answer with the option's letter from the given choices directly.")
    values, agg = _score(videomme, docs, preds)
    # lmms-eval 0.7.3 ranks letters by format: "The best answer is B." -> B (the reply ends
    # with it); "B" -> B; "Answer: D" -> D (the end); "The correct option is C" -> C (a
    # phrase, and the end); 13 words without a capital A-D -> no answer.
    assert [v["pred_answer"] for v in values] == ["B", "B", "D", "C", ""]
    assert agg["score"] == 40.0
    assert agg["per_duration"] == {"long": 0.0, "short": pytest.approx(200 / 3)}
    assert agg["per_category"] == {"Counting Problem": pytest.approx(100 / 3),
                                   "Object Recognition": 50.0}


@pytest.mark.parametrize("original", [False, True])
def test_egoschema_subset_exact_matching(tmp_path, original):
    root, preds = fx.egoschema_folder(str(tmp_path), original=original)
    docs = egoschema.load(root)
    assert len(docs) == 5  # the question outside the subset is not read
    assert egoschema.doc_to_text(docs[0]) == (
        "What does c do?\nA. He cooks.\nB. He reads a book\nC. He sleeps.\nD. He runs.\n"
        "E. He swims.\nAnswer with the option's letter from the given choices directly.")
    values, agg = _score(egoschema, docs, preds)
    draw = random.Random(0).choice("ABCDE")  # the first reply without a letter draws
    # "B" -> B; "B." -> B (the period is stripped); "He reads a book." has no letter and
    # 4 words (too few to match option texts) -> the draw; "B. He reads a book." -> B;
    # "A" -> A.
    assert [v["parsed"] for v in values] == ["B", "B", draw, "B", "A"]
    assert [v["pred"] for v in values] == [1, 1, "ABCDE".index(draw), 1, 0]
    assert agg["score"] == (3 + (draw == "B")) / 5


def test_nextqa_mc_parser_with_seeded_random_fallback(tmp_path):
    root, preds = fx.nextqa_folder(str(tmp_path))
    docs = nextqa.load(root)
    assert docs[3].video.endswith("NExTVideo/101/403.mp4")
    assert nextqa.doc_to_text(docs[0]) == (
        "what animal is shown\nA. cat\nB. dog\nC. bird\nD. fish\nE. cow")
    values, agg = _score(nextqa, docs, preds, seed=7)
    fallback = random.Random(7).choice(nextqa.OPTIONS)  # "hmm" parses to nothing: the draw
    # "(B) dog" -> bracket B; "B" -> B; 9 words naming "dog" -> B; "A B" -> the last, B.
    assert [v["parsed"] for v in values] == ["B", "B", "B", fallback, "B"]
    assert agg["score"] == (4 + (fallback == "B")) / 5
    assert set(agg["per_category"]) == {"CW", "TN", "DC"}  # TP counts as TN
    assert [v["parsed"] for v in _score(nextqa, docs, preds, seed=7)[0]] == \
        [v["parsed"] for v in values]  # same seed, same fallback


def test_longvideobench_parse_and_groupings(tmp_path):
    root, preds = fx.longvideobench_folder(str(tmp_path))
    docs = longvideobench.load(root)
    assert longvideobench.doc_to_text(docs[0]) == (
        "What is on the table?\nA. a cup\nB. a pen\nC. a book\nD. a lamp\n"
        "Answer with the option's letter from the given choices directly.\n")
    values, agg = _score(longvideobench, docs, preds, seed=3)
    draw = random.Random(3).choice(["A", "B", "C", "D"])  # "option c": no capital A-E
    # "C" right; "The answer is C." -> C right; "D. A book" -> D (the first letter);
    # "Best answer: B" -> B.
    assert [v["parsed_pred"] for v in values] == ["C", "C", draw, "D", "B"]
    right = 2 + (draw == "C")
    assert agg["score"] == round(right / 5, 5)
    assert agg["per_category"]["15"] == round((1 + 0) / 2, 5)  # q0 right, q4 wrong


def test_samples_log_has_lmms_eval_fields(tmp_path):
    root, preds = fx.videomme_folder(str(tmp_path))
    doc = videomme.load(root)[0]
    value = videomme.process(doc, preds[0], random.Random(0))
    rec = video_benchmarks.sample_record(doc, videomme.doc_to_text(doc),
                                         {"max_new_tokens": 16}, preds[0], preds[0],
                                         videomme.METRIC, value)
    assert set(rec) == {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps",
                        "token_counts", "doc_hash", "videomme_perception_score"}
    json.dumps(rec)  # serialisable as it is
    # The file's line, as lmms-eval 0.7.3 writes it: the reply once, the prompt as input.
    line = video_benchmarks.log_line(rec)
    assert set(line) == {"doc_id", "target", "filtered_resps", "token_counts", "doc_hash",
                         "videomme_perception_score", "input"}
    assert line["filtered_resps"] == preds[0] and line["input"] == videomme.doc_to_text(doc)
    differs = video_benchmarks.log_line(dict(rec, resps=[["raw " + preds[0]]]))
    assert differs["resps"] == ["raw " + preds[0]]   # one wrapper off, as lmms-eval writes it


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Video-MME"):
        videomme.load(str(tmp_path))
    with pytest.raises(ValueError, match="unknown benchmark 'mmbench'"):
        video_benchmarks.get("mmbench")
    fx.write_json(str(tmp_path / "lvb_val.json"), [{"id": "x"}])
    with pytest.raises(ValueError, match="lvb_val.json.*lacks field"):
        longvideobench.load(str(tmp_path))
