"""lm-eval-harness task YAMLs for a synthetic GSM8K-style split, written by the workflow.

Two tasks: `<dataset>_gen` (generate-until, greedy, scored on the number after '####') and
`<dataset>_mc` (multiple choice by log-likelihood: the correct solution against three with a
wrong final step).
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import yaml

from .io import atomic_path, read_jsonl, run_cli
from .records import validate_record

ANSWER_REGEX = r"#### (\-?[0-9\.\,]+)"


def wrong_solutions(solution: str, answer: str, rng: random.Random, n: int = 3) -> list[str]:
    """Copies of the solution whose last step and final answer are off by a small non-zero amount."""
    lines = solution.split("\n")
    value = int(answer)
    deltas = rng.sample([d for d in range(-4, 5) if d != 0 and value + d >= 0], n)
    out = []
    for d in deltas:
        wrong = value + d
        body = lines[:-1]
        body[-1] = re.sub(r"-?\d+$", str(wrong), body[-1])  # the last step's result
        body[-1] = re.sub(r"=-?\d+>>", f"={wrong}>>", body[-1])  # and its GSM8K calculator annotation, if any
        out.append("\n".join(body + [f"#### {wrong}"]))
    return out


def task_docs(records: list[dict], seed: int) -> list[dict]:
    docs = []
    for r in records:
        rng = random.Random(f"{seed}:{r['id']}")
        choices = wrong_solutions(r["chosen"], r["answer"], rng)
        label = rng.randrange(len(choices) + 1)
        choices.insert(label, r["chosen"])
        docs.append({"id": r["id"], "question": r["prompt"][-1]["content"], "answer": r["answer"],
                     "choices": choices, "label": label})
    return docs


def task_configs(name: str, docs_path: str, max_gen_toks: int) -> dict[str, dict]:
    common = {
        "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": docs_path}}, "test_split": "test",
        "doc_to_text": "{{question}}", "target_delimiter": "", "metadata": {"version": 1.0},
    }
    gen = dict(common, task=f"{name}_gen", output_type="generate_until", doc_to_target="{{answer}}",
               generation_kwargs={"until": ["</s>"], "do_sample": False, "max_gen_toks": max_gen_toks},
               filter_list=[{"name": "strict-match", "filter": [
                   {"function": "regex", "regex_pattern": ANSWER_REGEX}, {"function": "take_first"}]}],
               metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": False, "regexes_to_ignore": [","]}])
    mc = dict(common, task=f"{name}_mc", output_type="multiple_choice", doc_to_choice="{{choices}}",
              doc_to_target="{{label}}",
              metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                           {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}])
    return {gen["task"]: gen, mc["task"]: mc}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="normalised split with 'answer' fields")
    parser.add_argument("--name", required=True, help="task name prefix (the dataset name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-gen-toks", type=int, default=64)
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)

    def validate(record, error):
        validate_record(record, error)
        if not str(record.get("answer", "")).lstrip("-").isdigit():
            raise error("an integer answer is needed for the synthetic tasks", "answer")

    records = read_jsonl(args.data, validate)
    outdir = Path(args.outdir)
    with atomic_path(outdir) as tmp:
        tmp.mkdir()
        docs_path = outdir / "docs.jsonl"  # relative to the workdir, where every job runs: no host path in results
        (tmp / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in task_docs(records, args.seed)))
        for task, cfg in task_configs(args.name, str(docs_path), args.max_gen_toks).items():
            (tmp / f"{task}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"wrote tasks {args.name}_gen and {args.name}_mc over {len(records)} documents")


if __name__ == "__main__":
    run_cli(main)
