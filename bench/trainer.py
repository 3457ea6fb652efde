"""Our trainer's side of the benchmarks: a run with a cached, live or no reference, the tokens it
trains on, DFT with m = 2 and 4, and a cached against a live reference."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from workflow_scripts import refcache, train
from workflow_scripts.config import run_settings
from workflow_scripts.methods import negative_columns, negatives_required, refcache_settings
from workflow_scripts.records import read_pairs
from workflow_scripts.encoding import encode_examples, shared_prompt
from workflow_scripts.models import load_tokenizer

BASE = {"lr": 5e-4, "batch_size": 32, "micro_batch_size": 16, "warmup_ratio": 0.1, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "schedule": "cosine", "dtype": "float32",
        "max_length": 256, "max_prompt_length": 128, "prompt_format": None, "lora": None, "checkpoint_every": 0,
        "keep_checkpoints": 1, "precision": "mixed", "gradient_checkpointing": False, "attn_implementation": None,
        "seed": 0}


def tokens_processed(model: str, data: str, hp: dict) -> tuple[int, int]:
    """Non-padding tokens of the rows the policy is trained on over the run (chosen + the epoch's
    negatives of each example: the throughput's unit, the same for every trainer), and the tokens our
    forward computes (a prompt shared by an example's rows once: the FLOP count's unit)."""
    tok = load_tokenizer(model)
    records = read_pairs(data, negatives_required(hp["method"], hp))
    used = len(records) // hp["batch_size"] * hp["batch_size"]
    rows = computed = 0
    for epoch in range(hp["epochs"]):  # the examples the trainer draws (its seeded order, last partial batch dropped)
        examples, _ = encode_examples(tok, records, negative_columns(hp["method"], hp, epoch), hp)
        for i in train.epoch_order(len(examples), hp["seed"], epoch)[:used]:
            ex = examples[i]
            rows += sum(len(r.ids) for r in ex.rows)
            shared = ex.chosen.n_prompt if shared_prompt(ex.rows) else 0
            computed += sum(len(r.ids) for r in ex.rows) - shared * (len(ex.rows) - 1)
    return rows, computed


def cache_params(hp: dict, batch_size: int = 8) -> str:
    """The reference cache stage's params for a run (its settings with the schema's defaults), as JSON."""
    return json.dumps({**refcache_settings(run_settings(hp)), "shard_size": 2048, "dtype": hp["dtype"],
                       "batch_size": batch_size, "negatives": negatives_required(hp["method"], hp)})


def build_cache(model: str, data: str, hp: dict, path: Path) -> str:
    """The run's reference cache, by the workflow's own stage."""
    refcache.main(["--params", cache_params(hp), "--model", model, "--data", data, "--output", str(path)])
    return str(path)


def ours(model: str, data: str, hp: dict, workdir: Path, cache: str | None = None, live: bool = False) -> dict:
    """Our trainer in this process: reading a reference cache, with a live reference model, or neither."""
    extra = ["--ref-model", model] if cache or live else []
    extra += ["--refcache", cache] if cache else []
    start = time.perf_counter()
    train.main(["--params", json.dumps(hp), "--run", "bench", "--model", model, "--data", data,
                "--outdir", str(workdir / "out"), "--threads", str(torch.get_num_threads()), *extra])
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (workdir / "out/train_log.jsonl").read_text().splitlines()]
    tokens, computed = tokens_processed(model, data, hp)
    return {"seconds": seconds, "steps": len(log), "tokens": tokens, "tokens_per_s": tokens / seconds,
            "computed_tokens": computed, "losses": [e["loss"] for e in log], "final_loss": log[-1]["loss"]}


def dft_throughput(model: str, data: str) -> dict:
    out = {}
    for m in (2, 4):
        hp = {**BASE, "method": "dft", "tau": 1.0, "gamma": 0.85, "m": m, "sample": False, "reset_visited": True,
              "epochs": 1}
        with tempfile.TemporaryDirectory() as d:
            out[f"m{m}"] = ours(model, data, hp, Path(d), build_cache(model, data, hp, Path(d) / "ref.safetensors"))
    return out


def cached_vs_live(model: str, data: str) -> dict:
    hp = {**BASE, "method": "dpo", "beta": 0.1, "epochs": 1}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        cached = ours(model, data, hp, Path(a), build_cache(model, data, hp, Path(a) / "ref.safetensors"))
        live = ours(model, data, hp, Path(b), live=True)
    ratio = (cached["seconds"] / cached["steps"]) / (live["seconds"] / live["steps"])
    return {"cached_step_s": cached["seconds"] / cached["steps"], "live_step_s": live["seconds"] / live["steps"],
            "ratio": ratio, "goal": "cached step <= 0.8x live step", "met": ratio <= 0.8}
