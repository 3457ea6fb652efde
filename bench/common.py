"""Shared pieces of the benchmarks: the machine, a bench-sized Llama with the tiny tokenizer, synthetic data."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from workflow_scripts import synthetic_task
from workflow_scripts.tiny_world import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The checkout's commit, marked `-dirty` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return (head.strip() or "unknown") + ("-dirty" if dirty else "")


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "commit": commit(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


@contextmanager
def timed(out: dict, key: str):
    start = time.perf_counter()
    yield
    out[key] = time.perf_counter() - start


def wrong(answer: str, rng: random.Random) -> str:
    """A plausible wrong solution: the last number of each step shifted."""
    out = []
    for line in answer.split("\n"):
        head, _, num = line.rpartition(" ")
        out.append(f"{head} {int(num) + rng.choice([-2, -1, 1, 3])}" if num.lstrip("-").isdigit() else line)
    return "\n".join(out)


def make_world(root: Path, n: int = 256, negatives: int = 4, hidden: int = 256, layers: int = 4) -> tuple[str, str]:
    """(model dir, pairs file): a random Llama of the given size with the tiny tokenizer, and n
    synthetic problems with `negatives` wrong solutions each."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir, data = root / f"model_h{hidden}_l{layers}", root / f"pairs_{n}x{negatives}.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    problems = synthetic_task.make_splits(3, {"train": n}, 20)["train"]
    rng = random.Random(0)
    records = [{"id": f"bench-{p['index']}", "prompt": [{"role": "user", "content": p["question"]}],
                "chosen": p["answer"], "negatives": [wrong(p["answer"], rng) for _ in range(negatives)]}
               for p in problems]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    if not model_dir.exists():
        tok = train_tokenizer([r["prompt"][0]["content"] + "\n" + r["chosen"] for r in records] * 3, vocab_size=384)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3,
                             num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                             max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    return str(model_dir), str(data)
