"""The one trainer: every method of `losses.METHODS`, single or multi-process through accelerate.

The global batch is the recipe's whatever the process count: each optimizer step takes
`batch_size` examples, split into micro-batches of `micro_batch_size` over the processes, with
gradient accumulation making up the rest. Reference log-probs come from the reference cache
(checked by digest) or from a live reference model. Outputs: `model/` (safetensors and
tokenizer), `train_log.jsonl` (one line per optimizer step) and `run.json`.
"""
from __future__ import annotations

import argparse
import json
import math
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup, get_constant_schedule_with_warmup

from .data import read_pairs
from .encoding import encode_examples, forward_logps
from .io import InputError, atomic_path, run_cli, sha256_file, write_json
from .losses import METHODS, Stats, negative_columns, negatives_required
from .models import load_model, load_tokenizer, weights_digest
from .refcache import RefCache, expected_digests
from .versions import package_versions

SCHEDULES = {"cosine": get_cosine_schedule_with_warmup, "constant": get_constant_schedule_with_warmup}


def plan_batches(n_examples: int, hp: dict, world: int) -> tuple[int, int]:
    """(gradient accumulation steps, optimizer steps per epoch) for the recipe's global batch."""
    per_step = hp["micro_batch_size"] * world
    if hp["batch_size"] % per_step:
        raise ValueError(f"batch_size {hp['batch_size']} is not a multiple of micro_batch_size "
                         f"{hp['micro_batch_size']} x {world} processes")
    return hp["batch_size"] // per_step, n_examples // hp["batch_size"]


class Reference:
    """Reference log-probs of a batch, from the cache or from a live model."""

    def __init__(self, args, hp: dict, device):
        self.cache = self.model = None
        if args.refcache:
            expected = expected_digests(args.ref_model, args.ref_revision, args.data, hp)
            self.cache = RefCache(args.refcache, expected)
        elif args.ref_model:
            self.model = load_model(args.ref_model, args.ref_revision, hp["dtype"]).to(device).eval()

    def __call__(self, examples, columns, pad_id):
        if self.cache is not None:
            return self.cache.lookup([e.id for e in examples], columns)
        with torch.inference_mode():
            chosen, _, negatives, _ = forward_logps(self.model, examples, pad_id)
        return chosen.double(), negatives.double()


def train(args, hp: dict) -> None:
    set_seed(hp["seed"])
    accelerator = Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    method = METHODS[hp["method"]]
    tokenizer = load_tokenizer(args.model, args.revision)
    model = load_model(args.model, args.revision, hp["dtype"])
    records = read_pairs(args.data)
    need = negatives_required(hp["method"], hp)
    have = min((len(r["negatives"]) for r in records), default=0)
    if have < need:
        raise InputError(args.data, f"run '{args.run}' ({hp['method']}, m={hp.get('m')}, epochs={hp['epochs']}, "
                         f"sample={hp.get('sample', False)}) needs {need} negatives per example; the data holds {have}",
                         field="negatives")
    accum, steps_per_epoch = plan_batches(len(records), hp, world)
    if steps_per_epoch == 0:
        raise InputError(args.data, f"{len(records)} examples are fewer than one batch of {hp['batch_size']}")
    total_steps = steps_per_epoch * hp["epochs"]
    reference = Reference(args, hp, accelerator.device) if method.needs_ref else None

    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], betas=tuple(hp["adam_betas"]),
                                  eps=hp["adam_eps"], weight_decay=hp["weight_decay"])
    scheduler = SCHEDULES[hp["schedule"]](optimizer, math.ceil(hp["warmup_ratio"] * total_steps),
                                          **({"num_training_steps": total_steps} if hp["schedule"] == "cosine" else {}))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    slot = {r["id"]: i for i, r in enumerate(records)}
    u = torch.zeros(len(records), dtype=torch.float64)
    visited = torch.zeros(len(records), dtype=torch.float64)
    log, n_truncated, step = [], 0, 0
    bar = tqdm(total=total_steps, desc=f"train {args.run}", mininterval=5, disable=not accelerator.is_main_process)
    for epoch in range(hp["epochs"]):
        columns = negative_columns(hp["method"], hp, epoch)
        examples, truncated = encode_examples(tokenizer, records, columns, hp)
        n_truncated += truncated
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(hp["seed"] + epoch)).tolist()
        for s in range(steps_per_epoch):
            batch = order[s * hp["batch_size"]: (s + 1) * hp["batch_size"]]
            micro = hp["micro_batch_size"]
            mine = batch[rank * accum * micro: (rank + 1) * accum * micro]
            totals: dict[str, float] = {}
            for k in range(accum):
                chunk = [examples[i] for i in mine[k * micro: (k + 1) * micro]]
                with accelerator.no_sync(model) if k < accum - 1 else nullcontext():
                    out = _micro_step(model, chunk, columns, method, hp, reference, u, slot, tokenizer.pad_token_id)
                    accelerator.backward(out.loss * len(chunk) * world / len(batch))
                for key, value in {"loss": out.loss.item(), **out.metrics}.items():
                    totals[key] = totals.get(key, 0.0) + value / accum
                if out.state is not None:
                    idx = torch.tensor([slot[e.id] for e in chunk])
                    u[idx], visited[idx] = out.state.double().cpu(), 1.0
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
            optimizer.step(), scheduler.step(), optimizer.zero_grad()
            step += 1
            loss = accelerator.reduce(torch.tensor(totals["loss"], device=accelerator.device), "mean").item()
            entry = {"step": step, "epoch": epoch + (s + 1) / steps_per_epoch, **totals, "loss": loss,
                     "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
            log.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if method.stateful and world > 1:
            _average_state(accelerator, u, visited, hp.get("reset_visited", True))
    bar.close()

    if accelerator.is_main_process:
        _save(accelerator.unwrap_model(model), tokenizer, log, args, hp, {
            "world_size": world, "gradient_accumulation_steps": accum, "effective_global_batch": hp["batch_size"],
            "optimizer_steps": total_steps, "examples_per_epoch": steps_per_epoch * hp["batch_size"],
            "examples_dropped_per_epoch": len(records) - steps_per_epoch * hp["batch_size"],
            "responses_truncated": n_truncated})
    accelerator.wait_for_everyone()


def _micro_step(model, chunk, columns, method, hp, reference, u, slot, pad_id):
    chosen, chosen_n, negatives, negatives_n = forward_logps(model, chunk, pad_id)
    stats = Stats(chosen, chosen_n, negatives, negatives_n)
    if reference is not None:
        ref_chosen, ref_negatives = reference(chunk, columns, pad_id)
        stats.ref_chosen = ref_chosen.to(chosen.device, chosen.dtype)
        stats.ref_negatives = ref_negatives.to(chosen.device, chosen.dtype)
    state = u[torch.tensor([slot[e.id] for e in chunk])].to(chosen.device, chosen.dtype) if method.stateful else None
    return method.loss(stats, hp, state)


def _average_state(accelerator, u: torch.Tensor, visited: torch.Tensor, reset: bool) -> None:
    """Epoch end: u of each id averaged over the processes that visited it (upstream DFT)."""
    device = accelerator.device
    total = accelerator.reduce((u * visited).to(device), "sum").cpu()
    count = accelerator.reduce(visited.to(device), "sum").cpu()
    u.copy_(torch.where(count > 0, total / count.clamp(min=1), u))
    if reset:
        visited.zero_()


def _save(model, tokenizer, log, args, hp, batching) -> None:
    with atomic_path(f"{args.outdir}/model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    with atomic_path(f"{args.outdir}/train_log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(entry, sort_keys=True) + "\n" for entry in log))
    write_json(f"{args.outdir}/run.json", {
        "run": args.run, "method": hp["method"], "hyperparameters": hp, "seed": hp["seed"], **batching,
        "base_model": {"model": args.model, "revision": args.revision},
        "digests": {
            "base_weights": weights_digest(args.model, args.revision), "data": sha256_file(args.data),
            **({"refcache": sha256_file(args.refcache)} if args.refcache else {}),
            "final_weights": weights_digest(f"{args.outdir}/model"),
        },
        "final_loss": log[-1]["loss"], "versions": package_versions(),
    })


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the run's resolved hyper-parameters")
    parser.add_argument("--run", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--data", required=True)
    parser.add_argument("--refcache", default=None)
    parser.add_argument("--ref-model", default=None)
    parser.add_argument("--ref-revision", default=None)
    parser.add_argument("--outdir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args, json.loads(args.params))


if __name__ == "__main__":
    run_cli(main)
