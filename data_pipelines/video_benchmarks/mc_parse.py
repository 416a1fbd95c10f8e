"""The multiple-choice parser lmms-eval's NExT-QA task takes from MMMU (random fallback)."""

from __future__ import annotations

import numpy as np


def parse_multi_choice_response(response: str, all_choices: list[str],
                                index2ans: dict[str, str], rng) -> str:
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "  # spaces avoid partial matches
    index_ans, ans_with_brack, candidates = True, False, []
    for choice in all_choices:  # (A) (B) ...
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True
    if not candidates:
        for choice in all_choices:  # A B ...
            if f"{choice} " in response:
                candidates.append(choice)
    if not candidates:
        for choice in all_choices:  # A. B. ...
            if f"{choice}." in response:
                candidates.append(choice)
    if not candidates and len(response.split()) > 5:  # the option's text
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False
    if not candidates:
        return rng.choice(all_choices)
    if len(candidates) == 1:
        return candidates[0]
    if index_ans and ans_with_brack:
        starts = [response.rfind(f"({c})") for c in candidates]
    elif index_ans:
        starts = [response.rfind(f" {c} ") for c in candidates]
    else:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    return candidates[int(np.argmax(starts))]  # the last one mentioned
