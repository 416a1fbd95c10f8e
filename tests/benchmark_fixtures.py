"""Tiny copies of the standard video benchmarks in their released formats, with tiny videos.

Each writer lays out a folder as the benchmark's release does and returns it with the
hand-written model outputs used by the scoring tests.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipelines.video_benchmarks import mvbench
from video_files import write_frames


def write_video(path: str, frames: int = 6, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    write_frames(path, rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8))
    return path


def write_parquet(path: str, records: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_json(path: str, value) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)
    return path


def mvbench_folder(root: str) -> tuple[str, list[str]]:
    """Two populated tasks (5 + 3 questions), the other 18 released as empty lists."""
    for task in mvbench.DATA_LIST:
        write_json(os.path.join(root, "json", f"{task}.json"), [])
    seq = [dict(video=f"clip{i}.mp4", question="What does the person do?",
                candidates=["walk", "run", "jump"], answer="run") for i in range(5)]
    exist = [dict(video=f"v{i}.mp4", question="Is there a cube?", candidates=["yes", "no"],
                  answer="no") for i in range(3)]
    write_json(os.path.join(root, "json", "action_sequence.json"), seq)
    write_json(os.path.join(root, "json", "object_existence.json"), exist)
    for i in range(5):  # star videos unpacked under video/ (the second place looked at)
        write_video(os.path.join(root, "video", "star/Charades_segment", f"clip{i}.mp4"), seed=i)
    for i in range(3):
        write_video(os.path.join(root, "clevrer/video_validation", f"v{i}.mp4"), seed=10 + i)
    preds = ["(B) run", "B.", "", "I think a man runs", "C. jump",  # action_sequence
             "B", "no", "(B)"]  # object_existence
    return root, preds


def videomme_folder(root: str) -> tuple[str, list[str]]:
    options = ["A. cat", "B. dog", "C. bird", "D. fish"]
    records = [dict(video_id=f"{i:03d}", duration="short" if i < 3 else "long",
                    domain="Knowledge", sub_category="Astronomy",
                    url="", videoID=f"vid{i}", question_id=f"{i:03d}-1",
                    task_type="Object Recognition" if i % 2 else "Counting Problem",
                    question="Which animal appears?", options=options, answer="B")
               for i in range(5)]
    write_parquet(os.path.join(root, "videomme", "test-00000-of-00001.parquet"), records)
    for i in range(5):
        write_video(os.path.join(root, "data", f"vid{i}.mp4"), seed=i)
    preds = ["The best answer is B.", "B", "Answer: D", "The correct option is C",
             "I am not sure which one of these options matches the video at all sorry"]
    return root, preds


def egoschema_folder(root: str, original: bool = False) -> tuple[str, list[str]]:
    texts = ["He cooks.", "He reads a book", "He sleeps.", "He runs.", "He swims."]
    uids = [f"uid-{i}" for i in range(5)]
    if original:  # questions.json (5 here, one outside the subset) + subset_answers.json
        questions = [dict(q_uid=u, google_drive_id="x", question="What does c do?",
                          **{f"option {k}": t for k, t in enumerate(texts)}) for u in uids]
        questions.append(dict(q_uid="not-in-subset", google_drive_id="x", question="?",
                              **{f"option {k}": t for k, t in enumerate(texts)}))
        write_json(os.path.join(root, "questions.json"), questions)
        write_json(os.path.join(root, "subset_answers.json"), {u: 1 for u in uids})
    else:
        records = [dict(question_idx=u, question="What does c do?", video_idx=u,
                        option=[f"{'ABCDE'[k]}. {t}" for k, t in enumerate(texts)], answer="1")
                   for u in uids]
        write_parquet(os.path.join(root, "Subset", "test-00000-of-00001.parquet"), records)
    for i, u in enumerate(uids):
        write_video(os.path.join(root, "videos", f"{u}.mp4"), seed=i)
    preds = ["B", "B.", "He reads a book.", "B. He reads a book.", "A"]
    return root, preds


def nextqa_folder(root: str) -> tuple[str, list[str]]:
    answers = ["cat", "dog", "bird", "fish", "cow"]
    records = [dict(video=f"40{i}", frame_count=6, width=32, height=32,
                    question=" what animal is shown ", answer=1, qid=i,
                    type=["CW", "TP", "DC", "CW", "TN"][i],
                    **{f"a{k}": a for k, a in enumerate(answers)}) for i in range(5)]
    write_parquet(os.path.join(root, "MC", "test-00000-of-00001.parquet"), records)
    for i in range(5):  # nested as in NExTVideo/<group>/<video>.mp4
        write_video(os.path.join(root, "NExTVideo", f"10{i % 2}", f"40{i}.mp4"), seed=i)
    preds = ["(B) dog", "B", "The answer is the dog because it barks loudly", "hmm", "A B"]
    return root, preds


def longvideobench_folder(root: str) -> tuple[str, list[str]]:
    records = [dict(id=f"q{i}", video_id=f"v{i}", video_path=f"v{i}.mp4",
                    subtitle_path=f"v{i}_en.json", duration=6.0,
                    duration_group=[15, 60, 600, 3600, 15][i],
                    question_category=["S2E", "E2O", "S2E", "T3O", "E2O"][i],
                    starting_timestamp_for_subtitles=0,
                    question="What is on the table?", option0="a cup", option1="a pen",
                    option2="a book", option3="a lamp", option4="N/A", correct_choice=2)
               for i in range(5)]
    write_json(os.path.join(root, "lvb_val.json"), records)
    for i in range(5):
        write_video(os.path.join(root, "videos", f"v{i}.mp4"), seed=i)
    preds = ["C", "The answer is C.", "option c", "D. A book", "Best answer: B"]
    return root, preds


FOLDERS = dict(mvbench=mvbench_folder, videomme=videomme_folder, egoschema=egoschema_folder,
               nextqa=nextqa_folder, longvideobench=longvideobench_folder)
