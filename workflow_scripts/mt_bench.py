"""FastChat's MT-Bench pairwise protocol (llm_judge: `gen_judgment.py --mode pairwise-all`, then
`show_result.py --mode pairwise-all`) for a model against its baseline, judged by any chat model.

- Matches: every question gives a first-turn match and, when it has exactly two turns, a second-turn
  match that shows the judge both whole conversations (FastChat's rule).
- Prompts: FastChat's judge prompts, verbatim (`fastchat_judge_prompts.jsonl`, from lm-sys/FastChat at
  0e6d3e4, Apache-2.0): `pair-v2` / `pair-v2-multi-turn`, and `pair-math-v1` / `pair-math-v1-multi-turn`
  with the reference answers for the categories FastChat grades against one (math, reasoning, coding;
  one without references gets the general prompt, recorded with each match).
  The judge gets the prompt's system message and the filled template as the user message, as FastChat
  sends them to an OpenAI judge, and answers at temperature 0.
- Both orders: g1 shows the model as assistant A, g2 as assistant B. The verdict is the first of
  `[[A]]`, `[[B]]`, `[[C]]` (tie) found in the judgment, else an error.
- Tally (show_result's): a match with an error in either order is left out and counted as a failure
  (not a draw); a tie in g1 or two orders that disagree is a tie; otherwise the agreed winner. Counts
  win / loss / tie and win_rate, loss_rate, win_rate_adjusted (win + tie / 2) as fractions of the
  judged matches, as FastChat prints them.

FastChat's own code is not called here: its judge calls use the pre-1.0 `openai.ChatCompletion` API
and it imports `anthropic` at import time; tests check this module's prompts, verdicts and tally
against FastChat's `run_judge_pair`, `play_a_match_pair` and `show_result` on the same judgments.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

PROMPTS_FILE = Path(__file__).with_name("fastchat_judge_prompts.jsonl")
NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat's categories judged against reference answers
ERROR = "error"
METRICS = ("win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted", "n_judged", "judge_failures")


def judge_prompts() -> dict[str, dict]:
    """FastChat's judge prompts by name."""
    return {p["name"]: p for p in map(json.loads, PROMPTS_FILE.read_text().splitlines())}


def prompt_name(question: dict, turn: int) -> str:
    """FastChat's judge prompt for a turn: the reference-based one for its graded categories. A graded
    question without the references the turn needs gets the general prompt (FastChat's references always
    cover them; HuggingFaceH4/mt_bench_prompts leaves one coding question without)."""
    graded = question.get("category") in NEED_REF_CATS and len(question.get("references") or []) >= turn
    return ("pair-math-v1" if graded else "pair-v2") + ("-multi-turn" if turn == 2 else "")


def prompt_for(question: dict, answer_a: list[str], answer_b: list[str], turn: int,
               prompts: dict[str, dict]) -> tuple[str, str]:
    """(system prompt, user prompt) of one judgement: FastChat's template filled as `run_judge_pair` does.

    `question`: {"turns": user turns, "category", "references": reference answers per turn}."""
    name = prompt_name(question, turn)
    template = prompts[name]
    kwargs = {f"ref_answer_{k + 1}": question["references"][k] for k in range(turn)} if "math" in name else {}
    q = question["turns"]
    if turn == 2:
        user = template["prompt_template"].format(question_1=q[0], question_2=q[1], answer_a_1=answer_a[0],
                                                  answer_b_1=answer_b[0], answer_a_2=answer_a[1],
                                                  answer_b_2=answer_b[1], **kwargs)
    else:
        user = template["prompt_template"].format(question=q[0], answer_a=answer_a[0], answer_b=answer_b[0], **kwargs)
    return template["system_prompt"], user


def verdict(judgment: str) -> str:
    """`A`, `B`, `tie` or `error`, as FastChat reads a `[[A]]`-format judgment."""
    for mark, winner in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if mark in judgment:
            return winner
    return ERROR


def matches(question: dict) -> list[int]:
    """The turns judged for a question: the first, and the second when it has exactly two (FastChat)."""
    return [1, 2] if len(question["turns"]) == 2 else [1]


def play(items: list[dict], complete) -> list[dict]:
    """Every match of `items` judged in both orders; `complete(list of (system, user)) -> judgments`.

    An item: {"id", "question": {...}, "model_1": answers per turn (the evaluated model), "model_2": the
    baseline's}. Returns one record per match in FastChat's columns (g1: model_1 is assistant A)."""
    prompts = judge_prompts()
    plan, conversations = [], []
    for it in items:
        for turn in matches(it["question"]):
            a, b = it["model_1"], it["model_2"]
            conversations += [prompt_for(it["question"], a, b, turn, prompts),
                              prompt_for(it["question"], b, a, turn, prompts)]
            plan.append((it, turn))
    judgments = complete(conversations)
    out = []
    for k, (it, turn) in enumerate(plan):
        g1, g2 = judgments[2 * k], judgments[2 * k + 1]
        out.append({"question_id": it["id"], "turn": turn,
                    "g1_winner": {"A": "model_1", "B": "model_2"}.get(verdict(g1), verdict(g1)),
                    "g2_winner": {"A": "model_2", "B": "model_1"}.get(verdict(g2), verdict(g2)),
                    "judge_prompt": prompt_name(it["question"], turn), "g1_user_prompt": conversations[2 * k][1],
                    "g1_judgment": g1, "g2_judgment": g2})
    return out


def outcome(match: dict) -> str | None:
    """`win`, `loss` or `tie` of model_1 in one match (show_result's rule); None when either order failed."""
    g1, g2 = match["g1_winner"], match["g2_winner"]
    if ERROR in (g1, g2):
        return None
    if g1 == "tie" or g1 != g2:
        return "tie"
    return "win" if g1 == "model_1" else "loss"


def tally(results: list[dict]) -> dict:
    """model_1's win / loss / tie counts and rates over the judged matches, with standard errors."""
    outcomes = [o for o in map(outcome, results) if o is not None]
    n = len(outcomes)
    scores: dict = {k: sum(o == k for o in outcomes) for k in ("win", "loss", "tie")}
    per_match = {"win_rate": [float(o == "win") for o in outcomes], "loss_rate": [float(o == "loss") for o in outcomes],
                 "win_rate_adjusted": [{"win": 1.0, "tie": 0.5, "loss": 0.0}[o] for o in outcomes]}
    scores.update({k: statistics.fmean(v) if n else None for k, v in per_match.items()})
    scores["stderr"] = {k: statistics.stdev(v) / math.sqrt(n) if n > 1 else None for k, v in per_match.items()}
    scores.update(n_judged=n, judge_failures=len(results) - n, n_total=len(results))
    return scores
