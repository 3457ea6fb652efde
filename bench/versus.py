"""Our trainer against TRL's (DPOTrainer, KTOTrainer, SFTTrainer with loss_type="dft") on the same model,
data, global batch, example order, schedule and precomputed reference, each side in its own process
(peak memory is per process). Reported per side: the token ids it trains on (sha256 of the sorted
(prompt ids, response ids) rows: equal digests are identical ids), the loss at every optimizer step,
tokens/s (the non-padding tokens of the trained rows over the run, one unit for both), the process's
peak RSS (weights, gradients and AdamW's state in float32 are 16 bytes a parameter on both sides) and
the peak of a training step over the memory held when it began (activations and temporaries).

Our side reads a reference cache built beforehand by the workflow's own stage (as its training job
does); TRL's precomputes its reference log-probs inside its process, before its first step. Both sides
are timed: ours over its whole training call (model load and tokenisation included), TRL's from its
first to its last step (conservative for ours).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workflow_scripts.config import run_settings
from workflow_scripts.encoding import encode_examples, render_prompt
from workflow_scripts.methods import negative_columns, negatives_required
from workflow_scripts.models import load_model, load_tokenizer
from workflow_scripts.records import read_pairs
from workflow_scripts.train import epoch_order

from .common import ROOT
from .kernels import StepPeaks, _status_bytes
from .trainer import build_cache, ours

THEIRS = {"dpo": "trl_dpo", "kto": "trl_kto", "dynft": "trl_sft"}


def rows_digest(rows: list[tuple[list[int], list[int]]]) -> str:
    """sha256 of the sorted (prompt ids, response ids) rows: the same multiset of rows, the same digest."""
    return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()


def our_rows(model: str, data: str, hp: dict) -> list[tuple[list[int], list[int]]]:
    """The rows our trainer trains on over the run: each example's chosen and its epoch's negatives."""
    tok, records = load_tokenizer(model), read_pairs(data, negatives_required(hp["method"], hp))
    rows = []
    for epoch in range(hp["epochs"]):
        examples, _ = encode_examples(tok, records, negative_columns(hp["method"], hp, epoch), hp)
        rows += [(r.ids[:r.n_prompt], r.ids[r.n_prompt:]) for ex in examples for r in ex.rows]
    return rows


def trl_texts(tok, records: list[dict], hp: dict) -> list[dict]:
    """Each record as TRL's non-conversational rows: our rendered prompt (less a BOS text that the
    tokenizer adds again itself) and the responses, in our epoch-0 order."""
    adds_bos = tok.bos_token_id is not None and tok("x")["input_ids"][:1] == [tok.bos_token_id]
    out = []
    for i in epoch_order(len(records), hp["seed"], 0):  # TRL's side reads our epoch 0 in order
        r = records[i]
        prompt = render_prompt(tok, r["prompt"], prompt_format=hp.get("prompt_format"))
        if adds_bos and prompt.startswith(tok.bos_token):
            prompt = prompt[len(tok.bos_token):]
        out.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["negatives"][0]})
    return out


def trl_config(cls, hp: dict, n_rows: int, workdir: Path, **extra):
    """TRL's config for the run's batch (n_rows dataset rows), schedule and optimizer; float32, a log every step."""
    steps = n_rows // hp["batch_size"] * hp["epochs"]
    return cls(output_dir=str(workdir / "trl"), report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False,
               per_device_train_batch_size=hp["micro_batch_size"],
               gradient_accumulation_steps=hp["batch_size"] // hp["micro_batch_size"], num_train_epochs=hp["epochs"],
               learning_rate=hp["lr"], lr_scheduler_type=hp["schedule"],
               warmup_steps=math.ceil(hp["warmup_ratio"] * steps),
               max_grad_norm=hp["max_grad_norm"], weight_decay=hp["weight_decay"], adam_beta1=hp["adam_betas"][0],
               adam_beta2=hp["adam_betas"][1], adam_epsilon=hp["adam_eps"], seed=hp["seed"], logging_steps=1,
               save_strategy="no", dataloader_num_workers=0, dataloader_drop_last=True, disable_tqdm=True,
               train_sampling_strategy="sequential", max_length=None,
               gradient_checkpointing=hp["gradient_checkpointing"], **extra)


def trl_trainer(side: str, model_dir: str, data: str, hp: dict, workdir: Path):
    """TRL's trainer of the method, on our rows; returns it with a function listing the ids it trains on."""
    import datasets
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    tok, records = load_tokenizer(model_dir), read_pairs(data, 1)
    rows = trl_texts(tok, records, hp)
    policy = load_model(model_dir)
    if side == "trl_dpo":
        config = trl_config(DPOConfig, hp, len(rows), workdir, beta=hp["beta"], loss_type=["sigmoid"],
                            precompute_ref_log_probs=True)
        trainer = DPOTrainer(model=policy, processing_class=tok, train_dataset=datasets.Dataset.from_list(rows),
                             args=config)
        return trainer, lambda d: [(p, c) for p, a, b in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"])
                                   for c in (a, b)]
    if side == "trl_kto":
        # unpaired: each pair is a desirable and an undesirable row, so a batch of B pairs is 2B rows
        doubled = {**hp, "micro_batch_size": 2 * hp["micro_batch_size"], "batch_size": 2 * hp["batch_size"]}
        config = trl_config(KTOConfig, doubled, 2 * len(rows), workdir,
                            beta=hp["beta"], desirable_weight=hp["desirable_weight"],
                            undesirable_weight=hp["undesirable_weight"], precompute_ref_log_probs=True)
        trainer = KTOTrainer(model=policy, processing_class=tok, train_dataset=datasets.Dataset.from_list(rows),
                             args=config)
        return trainer, lambda d: list(zip(d["prompt_ids"], d["completion_ids"]))
    config = trl_config(SFTConfig, hp, len(rows), workdir, loss_type="dft", completion_only_loss=True)
    sft_rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    trainer = SFTTrainer(model=policy, processing_class=tok, train_dataset=datasets.Dataset.from_list(sft_rows),
                         args=config)
    start = lambda labels: next(i for i, x in enumerate(labels) if x != -100)  # noqa: E731 (the response's first)
    return trainer, lambda d: [(ids[:start(labels)], ids[start(labels):])
                               for ids, labels in zip(d["input_ids"], d["labels"])]


def timed_ours(model: str, data: str, hp: dict, workdir: Path, cache: str | None) -> dict:
    """Our trainer in this process, each optimizer step's peak memory measured."""
    from workflow_scripts.train import Trainer

    peaks, step = StepPeaks(), Trainer._optimizer_step

    def measured_step(self, *args, **kwargs):
        peaks.begin()
        step(self, *args, **kwargs)
        peaks.end()

    Trainer._optimizer_step = measured_step
    result = ours(model, data, hp, workdir, cache)
    return {**result, "step_peak_bytes": peaks.step_peak(), "rows_sha256": rows_digest(our_rows(model, data, hp))}


def theirs(side: str, model_dir: str, data: str, hp: dict, workdir: Path) -> dict:
    """A TRL trainer in this process, timed from its first to its last step, each step's peak memory measured."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    times, peaks = {}, StepPeaks()

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times["start"] = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            peaks.begin()

        def on_step_end(self, args, state, control, **kwargs):
            peaks.end()

        def on_train_end(self, args, state, control, **kwargs):
            times["end"] = time.perf_counter()

    trainer, ids_of = trl_trainer(side, model_dir, data, hp, workdir)
    trainer.add_callback(Clock())
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    rows = ids_of(trainer.train_dataset[:]) * hp["epochs"]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"seconds": times["end"] - times["start"], "rows_sha256": rows_digest(rows),
            "step_peak_bytes": peaks.step_peak(), "losses": losses}


def run_side(side: str, model: str, data: str, hp: dict, cache: str | None) -> dict:
    """One side in a fresh process: its result and the process's peak RSS."""
    args = [sys.executable, "-m", "bench.versus", "--side", side, "--model", model, "--data", data,
            "--hp", json.dumps(hp)] + (["--cache", cache] if cache else [])
    # freed memory goes back to the OS at once, so RSS follows the tensors (as in bench/precision.py)
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(model: str, data: str, hp: dict, goal_speedup: float | None = None,
            goal_memory: float | None = None) -> dict:
    """Ours and TRL's trainer of hp's method on the model and data, side by side."""
    hp = run_settings(hp)  # the schema's defaults, as the trainer reads them
    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(model, data, hp, Path(tmp) / "ref.safetensors") if hp["method"] in ("dpo", "kto") else None
        mine = run_side("ours", model, data, hp, cache)
        other = run_side(THEIRS[hp["method"]], model, data, hp, None)
    tokens = mine["tokens"]
    other["tokens_per_s"] = tokens / other["seconds"]
    steps = min(len(mine["losses"]), len(other["losses"]))
    out = {"model": Path(model).name, "method": hp["method"], "tokens": tokens, "ours": mine, "trl": other,
           "same_token_ids": mine["rows_sha256"] == other["rows_sha256"],
           "max_loss_difference": max(abs(a - b) for a, b in zip(mine["losses"][:steps], other["losses"][:steps])),
           "speedup": mine["tokens_per_s"] / other["tokens_per_s"],
           "peak_memory_ratio": mine["peak_rss_bytes"] / other["peak_rss_bytes"],
           "step_peak_ratio": mine["step_peak_bytes"] / other["step_peak_bytes"]}
    if goal_speedup is not None:
        out["goals"] = {f"tokens/s >= {goal_speedup}x TRL's": out["speedup"] >= goal_speedup,
                        f"peak memory <= {goal_memory}x TRL's": out["peak_memory_ratio"] <= goal_memory,
                        "identical token ids": out["same_token_ids"],
                        "equal loss at every step to 1e-4": out["max_loss_difference"] <= 1e-4}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", choices=["ours", *THEIRS.values()], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--hp", required=True, help="JSON: the run's hyper-parameters (our trainer's)")
    parser.add_argument("--cache", default=None, help="our side's reference cache")
    a = parser.parse_args()
    hp = json.loads(a.hp)
    with tempfile.TemporaryDirectory() as tmp:
        if a.side == "ours":
            result = timed_ours(a.model, a.data, hp, Path(tmp), a.cache)
        else:
            result = theirs(a.side, a.model, a.data, hp, Path(tmp))
    print(json.dumps({**result, "peak_rss_bytes": _status_bytes("VmHWM"), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
