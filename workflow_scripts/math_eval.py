"""Math evaluation: a model's answers to GSM8K / MATH / the synthetic set, checked with the ToRA rules.

Input per task: an answer set (one greedy response per prompt, written by the `answers` rule) and
the normalised split it answers (records with `answer`). Output: the eval JSON
`{"scores": {task: {"accuracy", "answered", "stderr"}}, "protocol": {...}}` and, beside it, one line
per example with the response, the extracted answer, the reference and the verdict.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics

from .answers import check
from .io import InputError, read_jsonl, run_cli, write_eval
from .records import answer_rows, validate_record
from .versions import package_versions


def read_answered(data: str, answers: str) -> list[tuple[dict, dict]]:
    """(record, answer) pairs in the answer file's order; every answer must belong to a record with an `answer`."""
    def validate(record, error):
        validate_record(record, error)
        if not isinstance(record.get("answer"), str):
            raise error("the math eval needs the reference answer of every record", "answer")

    records = {r["id"]: r for r in read_jsonl(data, validate)}
    out = []
    for lineno, row in enumerate(answer_rows(answers), start=1):
        if row["id"] not in records:
            raise InputError(answers, f"id {row['id']!r} is not in {data}", lineno, "id")
        out.append((records[row["id"]], row))
    if not out:
        raise InputError(answers, "no answers")
    return out


def score_task(task: str, answered: list[tuple[dict, dict]]) -> tuple[dict, list[dict]]:
    """Accuracy and the share of responses with any extractable answer, averaged per problem over its
    samples (mean@k; k = 1 for greedy answers), with the standard error over problems."""
    samples, per_problem = [], {}
    for record, row in answered:
        extracted, correct = check(row["text"], record["answer"])
        samples.append({"task": task, "id": record["id"], "seed": row.get("seed"), "response": row["text"],
                        "finish_reason": row.get("finish_reason"), "extracted": extracted,
                        "reference": record["answer"], "correct": correct})
        per_problem.setdefault(record["id"], []).append((correct, extracted is not None))
    accuracy = [statistics.fmean(c for c, _ in v) for v in per_problem.values()]
    answered_share = [statistics.fmean(a for _, a in v) for v in per_problem.values()]
    n = len(accuracy)

    def stderr(values):
        return statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"accuracy": statistics.fmean(accuracy), "answered": statistics.fmean(answered_share), "n": n,
            "samples_per_problem": len(samples) / n,
            "stderr": {"accuracy": stderr(accuracy), "answered": stderr(answered_share)}}, samples


def decoding(s: dict) -> str:
    """How an answer set was generated, in words."""
    how = "greedy" if s["temperature"] == 0 else f"temperature {s['temperature']}"
    if s.get("samples", 1) > 1:
        how += f", mean over {s['samples']} samples per problem"
    prompt = "raw prompt format" if s.get("prompt_format") else "chat template"
    return f"answers {how}, at most {s['max_new_tokens']} new tokens, {prompt}, {s['backend']} backend"


def protocol(model: str, settings: dict[str, dict]) -> dict:
    """What every number of this eval depends on, and the one-line summary a table caption quotes
    (answer sets generated differently are described one by one)."""
    described = {name: decoding(s) for name, s in settings.items()}
    if len(set(described.values())) == 1:
        answers = next(iter(described.values()))
    else:
        answers = "; ".join(f"{name}: {d}" for name, d in described.items())
    summary = f"{answers}; ToRA answer extraction, numeric or symbolic (sympy) equality"
    return {"evaluator": "math", "versions": package_versions(), "model": model, "answer_sets": settings,
            "extraction": "tora: 'final answer is $..$. I hope', last \\boxed{}, 'he answer is', 'final answer is', "
                          "last number", "summary": summary}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", required=True,
                        help="JSON: [{name, data, answers, settings}] one per answer set")
    parser.add_argument("--model", required=True, help="the evaluated model (recorded)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    tasks = json.loads(args.tasks)
    scores, samples = {}, []
    for t in tasks:
        scores[t["name"]], rows = score_task(t["name"], read_answered(t["data"], t["answers"]))
        samples += rows
        print(f"{t['name']}: accuracy {scores[t['name']]['accuracy']:.4f} over {scores[t['name']]['n']} "
              f"(answered {scores[t['name']]['answered']:.2%})")
    write_eval(args.output, {"scores": scores, "protocol": protocol(args.model, {t["name"]: t["settings"] for t in tasks})},
               samples)


if __name__ == "__main__":
    run_cli(main)
