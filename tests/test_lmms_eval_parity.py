"""The benchmark scorers against lmms-eval 0.7.3's own task functions.

The ``lmms-eval`` wheel is fetched from the package registry (no dependencies installed);
the task functions (prompt builders and answer extraction) are read from its files with
``ast`` and run in a namespace of the modules they use, with Python's ``random`` replaced by
a ``random.Random`` seeded as ours is. Both sides see the same docs and the same replies:
hand-written ones and a few hundred generated from the fragments models write.
"""

import ast
import itertools
import os
import random
import re
import string
import typing

import numpy as np
import pytest
import yaml

import benchmark_fixtures as fx
from data_pipelines import package_assets
from data_pipelines.video_benchmarks import (egoschema, longvideobench, mvbench, nextqa,
                                             videomme)

LMMS_EVAL = "lmms-eval==0.7.3"
FILES = {f"lmms_eval/tasks/{p}": p.replace("/", "__") for p in (
    "mvbench/utils.py", "mvbench/mvbench_action_sequence.yaml", "videomme/utils.py",
    "videomme/videomme.yaml", "_task_utils/mcq_extract.py", "egoschema/utils.py",
    "nextqa/utils.py", "longvideobench/utils.py", "longvideobench/longvideobench_val_v.yaml")}


@pytest.fixture(scope="module")
def lmms(tmp_path_factory):
    del tmp_path_factory
    folder = package_assets.asset_dir("lmms_eval_0.7.3")
    paths = {m: f"{folder}/{n}" for m, n in FILES.items()}
    if not all(os.path.isfile(p) for p in paths.values()):
        package_assets.from_wheel(LMMS_EVAL, FILES, folder)
    return paths


def _functions(path, names, seed=0):
    """The named top-level functions of a file, defined in a namespace of what they import."""
    tree = ast.parse(open(path).read())
    picked = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in picked} == set(names), path
    namespace = dict(re=re, random=random.Random(seed), np=np, string=string,
                     Optional=typing.Optional, List=typing.List)
    exec(compile(ast.Module(body=picked, type_ignores=[]), path, "exec"), namespace)
    return namespace


def _yaml(path):
    lines = [line for line in open(path) if "!function" not in line]
    return yaml.safe_load("".join(lines))


FRAGMENTS = ["A", "B", "C", "D", "E", "(B)", "B.", "C:", "D)", "a", "The answer is", "answer is C",
             "The best answer is", "I choose", "Best option:", "option", "dog", "He reads a book",
             "\n", " ", ".", "Answer:", "I think", "the cat", "no", "(E)", "E.", "A B", "x"]


def _replies(n=300, seed=0):
    rng = random.Random(seed)
    out = ["", "B", "(C) bird", "The best answer is B.", "Answer: D", "D. A book", "B. dog",
           "The correct option is C", "I am not sure which one of these options matches",
           "He reads a book", "B. He reads a book.", "It is (A) or maybe (B)",
           # Replies that mix letter formats, as real ones do: which format wins decides.
           "I think (C), not D.", "D. or rather (A)", "(B) and C.", "C: (D)", "A) B. (C)"]
    formats = ("({})", "{}.", "{}:", "{})", "{}")
    for _ in range(n):
        out.append(" ".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 8))))
        # Two letters in two formats, with words around them.
        first, second = rng.sample("ABCD", 2)
        out.append(f"{rng.choice(['I think', 'maybe', ''])} {rng.choice(formats).format(first)}"
                   f" {rng.choice(['not', 'or', ',', ''])} {rng.choice(formats).format(second)}")
    return out


def test_mvbench_prompt_and_scores(lmms, tmp_path):
    f = _functions(lmms["lmms_eval/tasks/mvbench/utils.py"], ["mvbench_doc_to_text", "mcq_acc"])
    kwargs = _yaml(lmms["lmms_eval/tasks/mvbench/mvbench_action_sequence.yaml"])[
        "lmms_eval_specific_kwargs"]["default"]
    root, _ = fx.mvbench_folder(str(tmp_path))
    doc = mvbench.load(root)[0]
    assert mvbench.doc_to_text(doc) == f["mvbench_doc_to_text"](doc.fields, kwargs)
    for reply in _replies():
        theirs = f["mcq_acc"](mvbench.gt_letter(doc), reply)
        assert mvbench.process(doc, reply, None)["score"] == theirs, reply


def test_videomme_prompt_and_extraction(lmms, tmp_path):
    f = _functions(lmms["lmms_eval/tasks/videomme/utils.py"], ["videomme_doc_to_text"])
    g = _functions(lmms["lmms_eval/tasks/_task_utils/mcq_extract.py"], ["extract_mcq_answer"])
    g.update(_ANSWER_PHRASES=_module_constant(lmms, "_ANSWER_PHRASES"),
             _FORMAT_PRIORITY=_module_constant(lmms, "_FORMAT_PRIORITY"),
             _DEFAULT_CHOICES=_module_constant(lmms, "_DEFAULT_CHOICES"))
    kwargs = _yaml(lmms["lmms_eval/tasks/videomme/videomme.yaml"])[
        "lmms_eval_specific_kwargs"]["default"]
    root, _ = fx.videomme_folder(str(tmp_path))
    doc = videomme.load(root)[0]
    assert videomme.doc_to_text(doc) == f["videomme_doc_to_text"](doc.fields, kwargs)
    for reply in _replies() + ["答案是 C", "The choice is D", "Because A) is wrong, B"]:
        assert videomme.extract(reply) == g["extract_mcq_answer"](reply, ["A", "B", "C", "D"]), \
            reply


def _module_constant(lmms, name):
    tree = ast.parse(open(lmms["lmms_eval/tasks/_task_utils/mcq_extract.py"]).read())
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(getattr(t, "id", None) == name for t in targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


@pytest.mark.parametrize("seed", [0, 5])
def test_egoschema_prompt_and_parser(lmms, tmp_path, seed):
    path = lmms["lmms_eval/tasks/egoschema/utils.py"]
    f = _functions(path, ["egoschema_doc_to_text", "get_multi_choice_info",
                          "parse_multi_choice_response"], seed)
    root, _ = fx.egoschema_folder(str(tmp_path))
    doc = egoschema.load(root)[0]
    assert egoschema.doc_to_text(doc) == f["egoschema_doc_to_text"](doc.fields, {})
    rng = random.Random(seed)
    index2ans, choices = f["get_multi_choice_info"](doc.fields)
    for reply in _replies(seed=seed):
        theirs, _ = f["parse_multi_choice_response"](reply, choices, index2ans)
        assert egoschema.process(doc, reply, rng)["parsed"] == theirs, reply


@pytest.mark.parametrize("seed", [0, 5])
def test_nextqa_prompt_and_parser(lmms, tmp_path, seed):
    path = lmms["lmms_eval/tasks/nextqa/utils.py"]
    f = _functions(path, ["nextqa_doc_to_text_mc", "parse_multi_choice_response",
                          "get_multi_choice_info"], seed)
    f["OPTIONS"] = ["A", "B", "C", "D", "E"]
    root, _ = fx.nextqa_folder(str(tmp_path))
    doc = nextqa.load(root)[0]
    assert nextqa.doc_to_text(doc) == f["nextqa_doc_to_text_mc"](doc.fields, {})
    rng = random.Random(seed)
    index2ans, choices = f["get_multi_choice_info"](doc.fields)
    for reply in _replies(seed=seed):
        theirs = f["parse_multi_choice_response"](reply, choices, index2ans)
        assert nextqa.process(doc, reply, rng)["parsed"] == theirs, reply


@pytest.mark.parametrize("seed", [0, 5])
def test_longvideobench_prompt_and_parser(lmms, tmp_path, seed):
    path = lmms["lmms_eval/tasks/longvideobench/utils.py"]
    f = _functions(path, ["longvideobench_doc_to_text", "parse_multi_choice_response"], seed)
    kwargs = _yaml(lmms["lmms_eval/tasks/longvideobench/longvideobench_val_v.yaml"])[
        "lmms_eval_specific_kwargs"]["default"]
    root, _ = fx.longvideobench_folder(str(tmp_path))
    doc = longvideobench.load(root)[0]
    assert longvideobench.doc_to_text(doc) == f["longvideobench_doc_to_text"](doc.fields, kwargs)
    rng = random.Random(seed)
    choices = ["A", "B", "C", "D"]
    for reply in _replies(seed=seed):
        theirs = f["parse_multi_choice_response"](reply, choices, {})
        assert longvideobench.process(doc, reply, rng)["parsed_pred"] == theirs, reply


def test_fragment_replies_cover_every_rule():
    """The generated replies reach the rules that matter: bracketed, dotted, phrased letters,
    and replies without any letter (the random fallbacks)."""
    replies = _replies()
    assert any("(" in r for r in replies) and any(r.strip().endswith(".") for r in replies)
    assert any(not re.search("[A-E]", r) for r in replies)
    assert len(set(itertools.islice(replies, 300))) > 200
