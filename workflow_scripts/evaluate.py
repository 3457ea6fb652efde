"""Evaluation stage: lm-eval-harness on a model, scores and protocol in one JSON.

Output: `{"scores": {task: {metric: value, "stderr": se}}, "protocol": {...}, "raw": {...}}`
with the per-sample records beside it (`<suite>.samples.jsonl`).
"""
from __future__ import annotations

import argparse
import itertools
import json

from .io import atomic_path, run_cli, write_json
from .versions import package_versions

TIME_KEYS = {"date", "start_time", "end_time", "total_evaluation_time_seconds", "pretty_env_info",
             "transformers_version", "upper_git_hash", "git_hash"}


def _scrub(obj):
    """The harness's output without timings and host details, so reruns give the same bytes."""
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in TIME_KEYS}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def run_lm_eval(model: str, revision: str | None, p: dict, include_path: str | None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    model_args = {"pretrained": model, "dtype": p["dtype"], **({"revision": revision} if revision else {})}
    scores, raw, samples, shots = {}, {}, [], {}
    by_shots = itertools.groupby(sorted(p["tasks"], key=lambda t: t["shots"]), key=lambda t: t["shots"])
    for n_shots, tasks in by_shots:
        tasks = list(tasks)
        res = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=[t["task"] for t in tasks], num_fewshot=n_shots,
            batch_size=p["batch_size"], apply_chat_template=p["apply_chat_template"], task_manager=manager,
            limit=p.get("limit"), log_samples=True, random_seed=p["seed"], numpy_random_seed=p["seed"],
            torch_random_seed=p["seed"], fewshot_random_seed=p["seed"], device=p.get("device", "cpu"))
        res = json.loads(json.dumps(res, default=str))
        for t in tasks:
            got = res["results"][t["task"]]
            key = f"{t['metric']},{t.get('filter', 'none')}"
            if key not in got:
                raise KeyError(f"task {t['task']}: metric {key!r} not in the harness output {sorted(got)}")
            stderr = got.get(f"{t['metric']}_stderr,{t.get('filter', 'none')}")
            scores[t["task"]] = {t["metric"]: got[key], "stderr": stderr if isinstance(stderr, float) else None}
            shots[t["task"]] = n_shots
        for task, rows in res.pop("samples").items():
            samples += [{"task": task, **row} for row in rows]
        raw[f"shots={n_shots}"] = _scrub(res)
    protocol = {
        "harness": "lm_eval", "versions": package_versions(), "model": model, "revision": revision,
        "shots": shots, "apply_chat_template": p["apply_chat_template"], "batch_size": p["batch_size"],
        "seed": p["seed"], "limit": p.get("limit"), "dtype": p["dtype"],
        "task_versions": {k: v for r in raw.values() for k, v in r.get("versions", {}).items()},
    }
    return {"scores": scores, "protocol": protocol, "raw": raw}, samples


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the eval suite's config entry")
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--tasks-dir", default=None, help="folder of task YAMLs written by the workflow")
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result, samples = run_lm_eval(args.model, args.revision, json.loads(args.params), args.tasks_dir)
    with atomic_path(args.output.removesuffix(".json") + ".samples.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(s, sort_keys=True, default=str) + "\n" for s in samples))
    write_json(args.output, result)
    for task, score in result["scores"].items():
        print(f"{task}: {score}")


if __name__ == "__main__":
    run_cli(main)
