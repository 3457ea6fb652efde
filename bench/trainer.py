"""Trainer throughput: ours against TRL's DPOTrainer, DFT with m = 2 and 4, cached against live reference."""
from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from workflow_scripts import refcache, train
from workflow_scripts.config import negative_columns, negatives_required, refcache_settings
from workflow_scripts.data import read_pairs
from workflow_scripts.encoding import encode_examples, render_prompt, shared_prompt
from workflow_scripts.models import load_model, load_tokenizer

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
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(hp["seed"] + epoch))[:used]
        for i in order.tolist():
            ex = examples[i]
            rows += sum(len(r.ids) for r in ex.rows)
            shared = ex.chosen.n_prompt if shared_prompt(ex.rows) else 0
            computed += sum(len(r.ids) for r in ex.rows) - shared * (len(ex.rows) - 1)
    return rows, computed


def ours(model: str, data: str, hp: dict, reference: str | None, workdir: Path) -> dict:
    """Our trainer in this process; reference None (reference-free), 'cache' or 'live'."""
    extra = []
    if reference:
        extra = ["--ref-model", model]
    if reference == "cache":
        cache = workdir / "ref.safetensors"
        settings = {**refcache_settings(hp), "shard_size": 2048, "dtype": hp["dtype"], "batch_size": 32,
                    "negatives": negatives_required(hp["method"], hp)}
        refcache.main(["--params", json.dumps(settings), "--model", model, "--data", data, "--output", str(cache)])
        extra += ["--refcache", str(cache)]
    start = time.perf_counter()
    train.main(["--params", json.dumps(hp), "--run", "bench", "--model", model, "--data", data,
                "--outdir", str(workdir / "out"), "--threads", str(torch.get_num_threads()), *extra])
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (workdir / "out/train_log.jsonl").read_text().splitlines()]
    tokens, computed = tokens_processed(model, data, hp)
    return {"seconds": seconds, "steps": len(log), "tokens": tokens, "tokens_per_s": tokens / seconds,
            "computed_tokens": computed, "final_loss": log[-1]["loss"]}


def trl_dpo(model_dir: str, data: str, hp: dict, workdir: Path) -> dict:
    """TRL's DPOTrainer on the same model, data, batch and schedule, reference log-probs precomputed
    (timed from the first to the last training step, so the precomputation is left out as ours is)."""
    import datasets
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    tok = load_tokenizer(model_dir)
    records = read_pairs(data, 1)
    rows = [{"prompt": render_prompt(tok, r["prompt"])[len(tok.bos_token):], "chosen": r["chosen"],
             "rejected": r["negatives"][0]} for r in records]
    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            times["end"] = time.perf_counter()

    policy = load_model(model_dir)
    steps = len(records) // hp["batch_size"] * hp["epochs"]
    config = DPOConfig(
        output_dir=str(workdir / "trl"), report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False,
        per_device_train_batch_size=hp["micro_batch_size"],
        gradient_accumulation_steps=hp["batch_size"] // hp["micro_batch_size"], num_train_epochs=hp["epochs"],
        learning_rate=hp["lr"], lr_scheduler_type="cosine", warmup_steps=math.ceil(hp["warmup_ratio"] * steps),
        max_grad_norm=hp["max_grad_norm"], weight_decay=0.0, seed=hp["seed"], beta=hp["beta"], loss_type=["sigmoid"],
        precompute_ref_log_probs=True, max_length=None, logging_steps=1, save_strategy="no",
        dataloader_num_workers=0, dataloader_drop_last=True, gradient_checkpointing=False, disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), processing_class=tok,
                         train_dataset=datasets.Dataset.from_list(rows), args=config, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    seconds = times["end"] - times["start"]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens = tokens_processed(model_dir, data, {**hp, "method": "dpo"})[0]
    return {"seconds": seconds, "steps": len(losses), "tokens": tokens, "tokens_per_s": tokens / seconds,
            "final_loss": losses[-1]}


def dpo_vs_trl(model: str, data: str) -> dict:
    hp = {**BASE, "method": "dpo", "beta": 0.1, "epochs": 2}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        mine = ours(model, data, hp, "cache", Path(a))
        theirs = trl_dpo(model, data, hp, Path(b))
    ratio = mine["tokens_per_s"] / theirs["tokens_per_s"]
    return {"ours": mine, "trl": theirs, "speedup": ratio, "goal": ">= 1.3x TRL tokens/s at equal loss",
            "met": ratio >= 1.3}


def dft_throughput(model: str, data: str) -> dict:
    out = {}
    for m in (2, 4):
        hp = {**BASE, "method": "dft", "tau": 1.0, "gamma": 0.85, "m": m, "sample": False, "reset_visited": True,
              "epochs": 1}
        with tempfile.TemporaryDirectory() as d:
            out[f"m{m}"] = ours(model, data, hp, "cache", Path(d))
    return out


def cached_vs_live(model: str, data: str) -> dict:
    hp = {**BASE, "method": "dpo", "beta": 0.1, "epochs": 1}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        cached = ours(model, data, hp, "cache", Path(a))
        live = ours(model, data, hp, "live", Path(b))
    ratio = (cached["seconds"] / cached["steps"]) / (live["seconds"] / live["steps"])
    return {"cached_step_s": cached["seconds"] / cached["steps"], "live_step_s": live["seconds"] / live["steps"],
            "ratio": ratio, "goal": "cached step <= 0.8x live step", "met": ratio <= 0.8}


def parameters(model: str) -> int:
    return sum(p.numel() for p in load_model(model).parameters())

