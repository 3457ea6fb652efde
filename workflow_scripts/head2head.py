"""Judged head-to-head evals: AlpacaEval (win rate against a reference) and the pairwise comparison of
a run with its starting model (win / tie / loss, adjusted win rate), or FastChat's MT-Bench pairwise
protocol over every turn of multi-turn answers (workflow_scripts/mt_bench.py).

Reads the model's answer set, the reference's answers (the split's `chosen` responses, or another
model's answer set) and the normalised split; a judge (workflow_scripts/judges.py) gives one
preference per instruction (1 reference, 2 model, 1.5 draw). AlpacaEval's numbers come from
alpaca_eval's own metrics (`get_winrate`; `get_length_controlled_winrate` when a local copy of its
instruction-difficulty file `df_gamed.csv` is configured, which alpaca_eval would otherwise
download). All rates are percentages. Judging is resumable in shards; the eval JSON keeps the
protocol and, beside it, every judgement.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from . import chat_templates
from .io import InputError, read_jsonl, run_cli, sha256_file, write_eval
from .judges import DRAW, JudgeModel, load_judge
from .mt_bench import PROMPTS_FILE, tally
from .records import answer_rows, validate_record
from .shards import run_in_shards
from .versions import package_versions


def head2head_items(data: str, answers: str, reference: str | None) -> list[dict]:
    """One item per answered record: the instruction, the reference's and the model's responses, the truth."""
    def validate(record, error):
        validate_record(record, error)
        if reference is None and not isinstance(record["chosen"], str):
            raise error("the reference responses are the split's `chosen` texts", "chosen")

    records = read_jsonl(data, validate)
    position = {r["id"]: i for i, r in enumerate(records)}
    model = {r["id"]: r.get("turns", [r["text"]]) for r in answer_rows(answers)}
    ref = ({r["id"]: r.get("turns", [r["text"]]) for r in answer_rows(reference)} if reference
           else {r["id"]: [r["chosen"]] for r in records})
    items = []
    for rid, text in model.items():
        if rid not in position:
            raise InputError(answers, f"id {rid!r} is not in {data}", field="id")
        if rid not in ref:
            raise InputError(reference or data, f"no reference response for id {rid!r}", field="id")
        r = records[position[rid]]
        items.append({"id": rid, "index": position[rid], "instruction": r["prompt"][-1]["content"],
                      "output_1": ref[rid][0], "output_2": text[0], "truth": r.get("answer"),
                      "question": {"turns": user_turns(r), "category": r.get("category"),
                                   "references": r.get("references")},
                      "reference_turns": ref[rid], "model_turns": text})
    return items


def user_turns(record: dict) -> list[str]:
    """The user's turns of a record: its last prompt message, then its follow-up questions."""
    return [record["prompt"][-1]["content"], *record.get("followups", [])]


def alpaca_scores(items: list[dict], judged: list[dict], model: str, difficulty_file: str | None) -> dict:
    """alpaca_eval's win rate (and LC win rate) from the preferences, in percent."""
    import pandas as pd
    from alpaca_eval.metrics import get_winrate

    df = pd.DataFrame({"preference": [j["preference"] for j in judged], "index": [it["index"] for it in items],
                       "output_1": [it["output_1"] for it in items], "output_2": [it["output_2"] for it in items],
                       "generator_1": "reference", "generator_2": model, "annotator": "judge"})
    scores = {k: float(v) for k, v in get_winrate(df).items()}
    scores["avg_length"] = statistics.fmean(len(it["output_2"]) for it in items)
    if difficulty_file:
        scores.update(length_controlled(df, difficulty_file))
    scores["stderr"] = {"win_rate": scores["standard_error"], **(
        {"length_controlled_winrate": scores["lc_standard_error"]} if difficulty_file else {})}
    return scores


def length_controlled(df, difficulty_file: str) -> dict:
    """alpaca_eval's length-controlled GLM on a local difficulty file instead of its hub download."""
    from alpaca_eval.metrics import glm_winrate

    def local_file(*, filename, **_):
        if filename != "df_gamed.csv":
            raise RuntimeError(f"alpaca_eval asked for {filename}; only df_gamed.csv is available offline")
        return difficulty_file

    download, glm_winrate.hf_hub_download = glm_winrate.hf_hub_download, local_file
    try:
        out = glm_winrate.get_length_controlled_winrate(df, save_weights_dir=None, is_warn_extreme_changes=False)
    finally:
        glm_winrate.hf_hub_download = download
    return {"length_controlled_winrate": float(out["length_controlled_winrate"]),
            "lc_standard_error": float(out["lc_standard_error"])}


def pairwise_scores(judged: list[dict]) -> dict:
    """Win / tie / loss shares of the model against its starting model and the adjusted win rate
    (win + tie / 2), in percent, each with its standard error over the prompts."""
    n = len(judged)
    outcomes = {"win": [float(j["preference"] > DRAW) for j in judged],
                "loss": [float(j["preference"] < DRAW) for j in judged]}
    outcomes["tie"] = [1 - w - lo for w, lo in zip(outcomes["win"], outcomes["loss"])]
    outcomes["adjusted_win_rate"] = [w + t / 2 for w, t in zip(outcomes["win"], outcomes["tie"])]
    scores = {k: 100 * statistics.fmean(v) for k, v in outcomes.items()}
    stderr = {k: 100 * statistics.stdev(v) / math.sqrt(n) if n > 1 else None for k, v in outcomes.items()}
    return {**scores, "n_total": n, "stderr": stderr}


def preference_scores(p: dict, items: list[dict], judged: list[dict], model: str) -> dict:
    """alpaca_eval's or the pairwise shares from one preference per instruction; a failed judgement is a draw
    (alpaca_eval's convention), counted in `judge_failures`."""
    failed = sum(j["preference"] is None for j in judged)
    for j in judged:
        j["preference"] = DRAW if j["preference"] is None else j["preference"]
    if p["kind"] == "alpaca_eval":
        scores = alpaca_scores(items, judged, model, p["difficulty_file"])
    else:
        scores = pairwise_scores(judged)
    return {**scores, "judge_failures": failed}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the eval's config entry")
    parser.add_argument("--data", required=True, help="the normalised split the answer set answers")
    parser.add_argument("--answers", required=True, help="the evaluated model's answer set")
    parser.add_argument("--reference-answers", default=None, help="the reference's answer set (default: `chosen`)")
    parser.add_argument("--reference-name", required=True)
    parser.add_argument("--model", required=True, help="the evaluated model (recorded)")
    parser.add_argument("--judge-model", default=None)
    parser.add_argument("--judge-revision", default=None)
    parser.add_argument("--trust-remote-code", action="store_true", help="the judge model's config entry allows it")
    chat_templates.add_argument(parser)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    p = json.loads(args.params)
    if p["difficulty_file"] and not Path(p["difficulty_file"]).is_file():
        raise InputError(p["difficulty_file"], "not found: a local copy of alpaca_eval's df_gamed.csv (the eval's "
                         "difficulty_file) is needed for the length-controlled win rate", field="difficulty_file")
    items = head2head_items(args.data, args.answers, args.reference_answers)
    judge_model = JudgeModel(args.judge_model, args.judge_revision, args.trust_remote_code, args.chat_template) \
        if args.judge_model else None
    judge = load_judge(p["judge"], p["seed"], judge_model)
    from .models import model_identity  # torch: only when a judge model is hashed

    fingerprint = {"stage": "head2head", "params": p, "answers": sha256_file(args.answers), "data": sha256_file(args.data),
                   "reference": sha256_file(args.reference_answers) if args.reference_answers else None,
                   "difficulty": sha256_file(p["difficulty_file"]) if p["difficulty_file"] else None,
                   "judge": model_identity(args.judge_model, args.judge_revision, args.chat_template) if args.judge_model else None}

    if p["judge"]["kind"] == "fastchat":
        fingerprint["judge_prompts"] = sha256_file(PROMPTS_FILE)

    def finish(judged: list[dict]) -> None:
        if p["judge"]["kind"] == "fastchat":
            scores = tally([m for j in judged for m in j["matches"]])
            counted = f"{len(items)} questions, {scores['n_total']} turn matches (FastChat pairwise, both orders)"
        else:
            scores = preference_scores(p, items, judged, args.model)
            counted = f"{len(items)} instructions"
        reference = "each run's starting model" if p["kind"] == "pairwise" else args.reference_name
        summary = (f"judge: {judge.description}; reference: {reference}; "
                   f"{counted}{'; length-controlled by alpaca_eval GLM' if p['difficulty_file'] else ''}")
        write_eval(args.output, {"scores": {p["kind"]: scores}, "protocol": {
            "evaluator": p["kind"], "versions": package_versions(), "model": args.model, "judge": p["judge"],
            "reference": args.reference_name, "seed": p["seed"], "difficulty_file": p["difficulty_file"],
            "judge_prompts": fingerprint.get("judge_prompts"), "summary": summary}},
            ({**it, **j} for it, j in zip(items, judged)))
        print(json.dumps(scores, indent=1))

    run_in_shards(args.output, items, judge.judge, fingerprint, 64, f"judge {p['kind']}", finish)


if __name__ == "__main__":
    run_cli(main)
