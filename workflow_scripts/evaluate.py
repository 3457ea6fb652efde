"""Evaluation stage: lm-eval-harness on a model, scores and protocol in one JSON.

Output: `{"scores": {task: {metric: value, "stderr": {metric: se}}}, "protocol": {...}, "raw": {...}}`
with the per-sample records beside it (`<suite>.samples.jsonl`). Each task is evaluated on its
own and kept as a shard until the whole suite is done, so a killed evaluation resumes from its
finished tasks (the model is loaded once, and only if a task is left).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import chat_templates
from .eval_kinds import metric_list
from .io import InputError, run_cli, sha256_file, sha256_tree, write_eval
from .models import default_device, model_identity, vllm_engine_args
from .nltk_resources import needs_punkt, require
from .shards import run_in_shards
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


class Harness:
    """lm-eval's model (HF or vLLM), built on first use, and one `simple_evaluate` per task."""

    def __init__(self, model: str, revision: str | None, p: dict, include_path: str | None, trust_remote_code: bool,
                 chat_template: str | None = None):
        self.args = {"pretrained": model, "dtype": p["dtype"], "trust_remote_code": trust_remote_code,
                     "batch_size": p["batch_size"], **({"revision": revision} if revision else {})}
        if p["backend"] == "hf":
            self.args["device"] = p["device"] or default_device()
            if p["attn_implementation"]:
                self.args["attn_implementation"] = p["attn_implementation"]  # HFLM passes it to from_pretrained
        else:  # vLLM: a seeded engine, placed as models.vllm_engine_args says
            self.args.update(seed=p["seed"], max_model_len=p["max_model_len"],
                             **vllm_engine_args(p["gpu_memory_utilization"]))
        self.p, self.include_path, self.chat_template, self.lm, self.manager = p, include_path, chat_template, None, None

    def model(self):
        """lm-eval's model object, loaded on first use."""
        from lm_eval.api.registry import get_model

        if self.lm is None:
            self.lm = get_model(self.p["backend"])(**self.args)
            if self.chat_template is not None:  # what both model types render chats with
                self.lm.tokenizer.chat_template = self.chat_template
                if self.p["backend"] == "vllm":
                    self.lm.hf_chat_template = self.chat_template
        return self.lm

    def evaluate(self, task: dict) -> dict:
        import lm_eval
        from lm_eval.tasks import TaskManager

        if self.manager is None:
            # indexing lm-eval's own task catalogue takes seconds: only when a task is not one of the workflow's
            local = {path.stem for path in Path(self.include_path).glob("*.yaml")} if self.include_path else set()
            self.manager = TaskManager(include_path=self.include_path,
                                       include_defaults=not all(t["task"] in local for t in self.p["tasks"]))
        p, seed = self.p, self.p["seed"]
        spec = local_data_task(self.manager, task) if task["data_files"] else task["task"]
        res = lm_eval.simple_evaluate(
            model=self.model(), tasks=[spec], num_fewshot=task["shots"], apply_chat_template=p["apply_chat_template"],
            system_instruction=p["system_prompt"],
            task_manager=self.manager, limit=p.get("limit"), log_samples=True, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        res = json.loads(json.dumps(res, default=str))
        samples = [{"task": name, **row} for name, rows in res.pop("samples").items() for row in rows]
        return {"task": task["task"], "shots": task["shots"], "raw": _scrub(res), "samples": samples,
                "score": task_score(task, res["results"][task["task"]])}


SPLIT_KEYS = ("test_split", "validation_split", "fewshot_split", "training_split")


def local_data_task(manager, task: dict) -> dict:
    """The harness's own config of a task (its YAML with includes) reading `data_files` instead of the hub:
    same columns, same split names, the same prompts, filters and metrics."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(task["task"])
    where = f"task {task['task']}, field 'data_files'"
    if entry is None or entry.yaml_path is None or entry.kind.name != "TASK":
        raise InputError(where, "local data replace the dataset of a task defined by a YAML (not of a group or "
                         "tag: list its tasks)")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    missing = sorted({cfg[k] for k in SPLIT_KEYS if cfg.get(k)} - set(task["data_files"]))
    if missing:
        raise InputError(where, f"the task reads the splits {missing}, which have no local file")
    builder = {"jsonl": "json", "json": "json", "parquet": "parquet"}
    kinds = {builder[path.rsplit(".", 1)[1]] for path in task["data_files"].values()}
    if len(kinds) > 1:
        raise InputError(where, "all local files of a task must be JSON or all parquet")
    return {**{k: v for k, v in cfg.items() if k not in ("tag", "group")}, "dataset_path": kinds.pop(),
            "dataset_name": None, "dataset_kwargs": {"data_files": dict(task["data_files"])}}


def task_data_digests(tasks: list[dict]) -> dict:
    """{task: {split: {path, sha256}}} of the tasks read from local files."""
    return {t["task"]: {split: {"path": path, "sha256": sha256_file(path)} for split, path in t["data_files"].items()}
            for t in tasks if t["data_files"]}


def task_score(task: dict, got: dict) -> dict:
    """`{metric: value, "stderr": {metric: se}}` for the task's kept metrics under its filter."""
    score, stderr = {}, {}
    for metric in metric_list(task):
        key = f"{metric},{task['filter']}"
        if key not in got:
            raise KeyError(f"task {task['task']}: metric {key!r} not in the harness output {sorted(got)}")
        score[metric] = got[key]
        se = got.get(f"{metric}_stderr,{task['filter']}")
        stderr[metric] = se if isinstance(se, float) else None
    return {**score, "stderr": stderr}


def suite_result(model: str, revision: str | None, p: dict, done: list[dict], data: dict) -> dict:
    """The eval JSON from the per-task results, with the protocol of every number."""
    versions = package_versions()
    shots = ", ".join(f"{d['task']} {d['shots']}-shot" for d in done)
    summary = (f"lm-eval-harness {versions.get('lm_eval')} ({p['backend']}, {p['dtype']}); {shots}; "
               f"chat template {'on' if p['apply_chat_template'] else 'off'}; batch size {p['batch_size']}; "
               f"seed {p['seed']}" + (f"; first {p['limit']} documents per task" if p.get("limit") else ""))
    protocol = {
        "harness": "lm_eval", "versions": versions, "model": model, "revision": revision, "summary": summary,
        "backend": p["backend"], "system_prompt": p["system_prompt"],
        "shots": {d["task"]: d["shots"] for d in done}, "apply_chat_template": p["apply_chat_template"],
        "batch_size": p["batch_size"], "seed": p["seed"], "limit": p.get("limit"), "dtype": p["dtype"],
        "attn_implementation": p.get("attn_implementation"),
        "task_versions": {k: v for d in done for k, v in d["raw"].get("versions", {}).items()},
        "task_data": data["task_data"], "nltk_punkt_tab": data["nltk_punkt_tab"],
    }
    return {"scores": {d["task"]: d["score"] for d in done}, "protocol": protocol,
            "raw": {d["task"]: d["raw"] for d in done}}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the eval suite's config entry")
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--tasks-dir", default=None, help="folder of task YAMLs written by the workflow")
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nltk-data", default=None, help="the NLTK_DATA folder with punkt_tab (IFEval)")
    parser.add_argument("--trust-remote-code", action="store_true", help="the model's config entry allows its own code")
    chat_templates.add_argument(parser)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    p = json.loads(args.params)
    punkt = require(args.nltk_data) if any(needs_punkt(t["task"]) for t in p["tasks"]) else None
    harness = Harness(args.model, args.revision, p, args.tasks_dir, args.trust_remote_code, args.chat_template)
    fingerprint = {"stage": "evaluate", "params": p, "model": model_identity(args.model, args.revision, args.chat_template),
                   "tasks_dir": sha256_tree(args.tasks_dir) if args.tasks_dir else None,
                   "task_data": task_data_digests(p["tasks"]), "nltk_punkt_tab": punkt}  # the protocol records them too

    def finish(done: list[dict]) -> None:
        write_eval(args.output, suite_result(args.model, args.revision, p, done, fingerprint),
                   (s for d in done for s in d["samples"]))

    done, resumed = run_in_shards(args.output, p["tasks"], lambda tasks: [harness.evaluate(t) for t in tasks],
                                  fingerprint, 1, "evaluate", finish)
    for d in done:
        print(f"{d['task']}: {d['score']}")
    print(f"{resumed} tasks resumed")


if __name__ == "__main__":
    run_cli(main)
