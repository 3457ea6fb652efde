"""The one trainer: every method of `losses.METHODS`, single or multi-process through accelerate
(DDP or DeepSpeed ZeRO-2/3; processes and precision are set up by `distributed`).

The global batch is the recipe's whatever the process count: each optimizer step takes
`batch_size` examples, split into micro-batches of `micro_batch_size` over the processes, with
gradient accumulation making up the rest. Reference log-probs come from the reference cache
(checked by digest), from a live reference model, or (LoRA) from the policy with its adapters
disabled. Checkpoints every `checkpoint_every` steps and on SIGTERM/SIGUSR1 (preemption); a
restarted run resumes from the newest one by itself. Outputs: `model/` (safetensors and
tokenizer), `train_log.jsonl` (one line per optimizer step) and `run.json`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile

import torch
from accelerate.utils import DistributedType, set_seed
from tqdm import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from . import checkpoint
from .bmc import edit_masks, stopword_ids
from .data import read_pairs
from .distributed import make_accelerator, precision, prepare_reference, start_processes
from .encoding import encode_examples, forward_logps
from .io import InputError, atomic_path, run_cli, sha256_file, write_json
from .config import METHODS, negative_columns, negatives_required, refcache_settings
from .losses import LOSSES, Batch, kto_kl
from .models import load_model, load_tokenizer, weights_digest
from .refcache import RefCache, expected_digests
from .versions import package_versions

SCHEDULES = {"cosine": get_cosine_schedule_with_warmup, "constant": get_constant_schedule_with_warmup}
PREEMPTED_EXIT = 143


def plan_batches(n_examples: int, hp: dict, world: int) -> tuple[int, int]:
    """(gradient accumulation steps, optimizer steps per epoch) for the recipe's global batch."""
    per_step = hp["micro_batch_size"] * world
    if hp["batch_size"] % per_step:
        raise ValueError(f"batch_size {hp['batch_size']} is not a multiple of micro_batch_size "
                         f"{hp['micro_batch_size']} x {world} processes")
    return hp["batch_size"] // per_step, n_examples // hp["batch_size"]


def load_policy(args, hp: dict):
    """The run's model: plain (in float32 when training mixed), or 4-bit NF4 for QLoRA (double
    quantisation, bf16 compute; GPU only)."""
    if not (hp.get("lora") or {}).get("load_in_4bit"):
        return load_model(args.model, args.revision, precision(hp)[0], args.trust_remote_code,
                          hp["attn_implementation"])
    if not torch.cuda.is_available():
        raise ValueError(f"run '{args.run}': lora.load_in_4bit (QLoRA, bitsandbytes) needs a GPU; "
                         "set it to false on CPU")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(args.model, revision=args.revision, quantization_config=quantization,
                                                 dtype=torch.bfloat16, trust_remote_code=args.trust_remote_code,
                                                 attn_implementation=hp["attn_implementation"])
    return prepare_model_for_kbit_training(model)


def apply_lora(model, lora: dict):
    """Wrap the model in PEFT LoRA adapters (the DPO-LoRA recipe: all linear layers)."""
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merged_lora(model, args, hp: dict):
    """Adapters merged into the base; a 4-bit (QLoRA) base is reloaded in bf16 to merge into."""
    if not hp["lora"].get("load_in_4bit"):
        return model.merge_and_unload()
    from peft import PeftModel
    with tempfile.TemporaryDirectory() as adapter:
        model.save_pretrained(adapter)
        base = load_model(args.model, args.revision, "bfloat16", args.trust_remote_code)
        return PeftModel.from_pretrained(base, adapter).merge_and_unload()


def _prepared_policy(accelerator, args, hp: dict, total_steps: int):
    """The policy (LoRA-wrapped, checkpointed as the run says), AdamW and the schedule, prepared."""
    model = load_policy(args, hp)
    if hp["gradient_checkpointing"]:  # the recipes' setting: recompute each layer in the backward pass
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if hp.get("lora"):
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(f"run '{args.run}': LoRA adapters are trained without DeepSpeed (the DPO-LoRA recipe "
                             "uses one GPU); drop `deepspeed` for this run")
        model = apply_lora(model, hp["lora"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp["lr"],
                                  betas=tuple(hp["adam_betas"]), eps=hp["adam_eps"], weight_decay=hp["weight_decay"])
    warmup = math.ceil(hp["warmup_ratio"] * total_steps)
    scheduler = SCHEDULES[hp["schedule"]](optimizer, warmup,
                                          **({"num_training_steps": total_steps} if hp["schedule"] == "cosine" else {}))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()  # from_pretrained leaves a model in eval mode, where checkpointing is off
    return model, optimizer, scheduler


class Reference:
    """Reference log-probs of a micro-batch: from the cache, a live model, or the policy without adapters."""

    def __init__(self, args, hp: dict, method, accelerator, policy):
        self.method, self.cache, self.model, self.policy = method, None, None, None
        if args.refcache:
            expected = expected_digests(args.ref_model, args.ref_revision, args.data, refcache_settings(hp))
            self.cache = RefCache(args.refcache, expected)
        elif hp.get("lora") and args.ref_model == args.model and args.ref_revision == args.revision:
            self.policy = accelerator.unwrap_model(policy)  # the same base with the adapters disabled
        else:
            model = load_model(args.ref_model, args.ref_revision, hp["dtype"], args.trust_remote_code,
                               hp["attn_implementation"])
            self.model = prepare_reference(model, accelerator)

    def fill(self, batch: Batch, chunk, columns, pad_id, share_prompts: bool) -> None:
        if self.cache is not None:
            ids = [e.id for e in chunk]
            device, dtype = batch.logps.device, batch.logps.dtype
            ref = self.cache.tokens(ids, columns, batch.mask) if self.method.token_ref else self.cache.sums(ids, columns)
            batch.ref_logps = ref.to(device, dtype)
            if self.method.kl_pairs:
                batch.kl_ref_logps = self.cache.kl_sums(ids, columns).to(device, dtype)
            return
        with torch.no_grad():
            if self.policy is not None:
                with self.policy.disable_adapter():
                    out = forward_logps(self.policy, chunk, pad_id, share_prompts)
            else:
                out = forward_logps(self.model, chunk, pad_id)
        batch.ref_logps = out.logps if self.method.token_ref else out.logps.sum(-1)
        batch.kl_ref_logps = out.kl_logps


class Preemption:
    """SIGTERM / SIGUSR1 (SLURM before the time limit) ask for a checkpoint at the next step boundary."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def train(args, hp: dict) -> None:
    world = start_processes().num_processes
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world:
        raise RuntimeError(f"the launcher started {launched} processes but accelerate sees {world}")
    method = METHODS[hp["method"]]
    records = read_pairs(args.data, negatives_required(hp["method"], hp),
                         f"run '{args.run}' ({hp['method']}, m={hp.get('m')}, epochs={hp['epochs']}, "
                         f"sample={hp.get('sample', False)})", labelled=bool(hp.get("unpaired")))
    accum, steps_per_epoch = plan_batches(len(records), hp, world)
    if steps_per_epoch == 0:
        raise InputError(args.data, f"{len(records)} examples are fewer than one batch of {hp['batch_size']}")
    accelerator = make_accelerator(hp, accum)
    rank = accelerator.process_index
    set_seed(hp["seed"])
    total_steps = steps_per_epoch * hp["epochs"]
    tokenizer = load_tokenizer(args.model, args.revision, args.trust_remote_code)
    model, optimizer, scheduler = _prepared_policy(accelerator, args, hp, total_steps)
    reference = Reference(args, hp, method, accelerator, model) if method.needs_ref else None
    stopwords = stopword_ids(tokenizer) if method.edit_mask else None
    share_prompts = not hp["gradient_checkpointing"]  # checkpointed layers keep no KV cache to share
    slot = {r["id"]: i for i, r in enumerate(records)}
    method_state = {"u": torch.zeros(len(records), dtype=torch.float64),
                    "visited": torch.zeros(len(records), dtype=torch.float64)}
    inputs = {"base_weights": weights_digest(args.model, args.revision), "data": sha256_file(args.data),
              **({"refcache": sha256_file(args.refcache)} if args.refcache else {})}
    run_fingerprint = checkpoint.fingerprint(hp, {**inputs, "world_size": world})
    log, n_truncated, step = [], 0, 0
    resume_from = checkpoint.latest(args.outdir, run_fingerprint)
    if resume_from is not None:
        saved, loaded = checkpoint.load(accelerator, resume_from)
        log, step, n_truncated = saved["log"], saved["step"], saved["responses_truncated"]
        method_state = {k: v.clone() for k, v in loaded.items()}
        accelerator.print(f"resumed from {resume_from} (step {step} of {total_steps})")
    u, visited = method_state["u"], method_state["visited"]
    preemption = Preemption()
    bar = tqdm(total=total_steps, initial=step, desc=f"train {args.run}", mininterval=5,
               disable=not accelerator.is_main_process)
    for epoch in range(step // steps_per_epoch, hp["epochs"]):
        columns = negative_columns(hp["method"], hp, epoch)
        examples, truncated = encode_examples(tokenizer, records, columns, hp, kl_pairs=method.kl_pairs,
                                              source=args.data)
        if step == epoch * steps_per_epoch:
            n_truncated += truncated
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(hp["seed"] + epoch)).tolist()
        for s in range(step - epoch * steps_per_epoch, steps_per_epoch):
            batch = order[s * hp["batch_size"]: (s + 1) * hp["batch_size"]]
            micro = hp["micro_batch_size"]
            mine = batch[rank * accum * micro: (rank + 1) * accum * micro]
            chunks = [[examples[i] for i in mine[k * micro: (k + 1) * micro]] for k in range(accum)]
            totals = _accumulate(accelerator, model, chunks, len(batch), world, lambda chunk: _micro_step(
                accelerator, model, chunk, columns, method, hp, reference, u, visited, slot, tokenizer.pad_token_id,
                stopwords, share_prompts))
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
            optimizer.step(), scheduler.step(), optimizer.zero_grad()
            step += 1
            if method.stateful and world > 1 and s == steps_per_epoch - 1:
                _average_state(accelerator, u, visited, hp.get("reset_visited", True))
            loss = accelerator.reduce(torch.tensor(totals["loss"], device=accelerator.device), "mean").item()
            log.append({"step": step, "epoch": epoch + (s + 1) / steps_per_epoch, **totals, "loss": loss,
                        "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            every = hp.get("checkpoint_every") or 0
            stop = _agree(accelerator, preemption.requested)
            if step < total_steps and (stop or (every and step % every == 0)):
                checkpoint.save(accelerator, args.outdir, step, {
                    "fingerprint": run_fingerprint, "log": log, "responses_truncated": n_truncated},
                    {"u": u, "visited": visited}, keep=hp["keep_checkpoints"])
            if stop:
                bar.close()
                accelerator.print(f"preempted: checkpoint at step {step} saved; exiting for requeue")
                sys.exit(PREEMPTED_EXIT)
    bar.close()
    _finish(accelerator, model, tokenizer, log, args, hp, inputs, {
        "distributed_type": str(accelerator.distributed_type).split(".")[-1], "device": str(accelerator.device),
        "world_size": world, "gradient_accumulation_steps": accum, "effective_global_batch": hp["batch_size"],
        "optimizer_steps": total_steps, "examples_per_epoch": steps_per_epoch * hp["batch_size"],
        "examples_dropped_per_epoch": len(records) - steps_per_epoch * hp["batch_size"],
        "responses_truncated": n_truncated, "resumed_from_step": int(resume_from.name[4:]) if resume_from else None})


def _finish(accelerator, model, tokenizer, log, args, hp, inputs, batching) -> None:
    """Save the whole model (ZeRO-3 partitions gathered, LoRA merged) and the run's records; drop checkpoints."""
    state_dict = None
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 partitions (a collective)
    elif hp.get("lora") and accelerator.is_main_process:
        unwrapped = merged_lora(unwrapped, args, hp)
    if accelerator.is_main_process:
        _save(unwrapped, state_dict, tokenizer, log, args, hp, inputs, batching)
    accelerator.wait_for_everyone()
    checkpoint.remove_all(accelerator, args.outdir)


def _accumulate(accelerator, model, chunks, batch_size: int, world: int, micro_step) -> dict[str, float]:
    """Forward and backward of this process's micro-batches of one optimizer step; their mean metrics.
    `micro_step(chunk)` returns the loss output (and updates a stateful method's per-example state)."""
    totals: dict[str, float] = {}
    for chunk in chunks:
        # syncs (DDP) and steps (DeepSpeed's engine) at the last micro-batch of the step only
        with accelerator.accumulate(model):
            out = micro_step(chunk)
            # weight of this micro-batch in the global mean; accelerate (or the DeepSpeed engine)
            # divides by gradient_accumulation_steps itself, and DDP averages over processes
            accelerator.backward(out.loss * len(chunk) * world * len(chunks) / batch_size)
        for key, value in {"loss": out.loss.item(), **out.metrics}.items():
            totals[key] = totals.get(key, 0.0) + value / len(chunks)
    return totals


def _agree(accelerator, flag: bool) -> bool:
    """True on every process when any process got a preemption signal."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item())


def _micro_step(accelerator, model, chunk, columns, method, hp, reference, u, visited, slot, pad_id, stopwords,
                share_prompts):
    fwd = forward_logps(model, chunk, pad_id, share_prompts)
    batch = Batch(fwd.logps, fwd.mask)
    if chunk[0].label is not None:
        batch.labels = torch.tensor([e.label for e in chunk])
    if reference is not None:
        reference.fill(batch, chunk, columns, pad_id, share_prompts)
    if method.edit_mask:
        batch.edit_mask = edit_masks(fwd.input_ids, stopwords)
    state = None
    if method.kl_pairs:
        batch.kl_logps = fwd.kl_logps
        state = accelerator.reduce(kto_kl(batch), "mean")  # TRL: gathered over processes, then clamped
    elif method.stateful:
        idx = torch.tensor([slot[e.id] for e in chunk])
        state = u[idx].to(fwd.logps.device, fwd.logps.dtype)
    out = LOSSES[hp["method"]](batch, hp, state)
    if method.stateful:  # this process's examples get their new u (averaged over processes at epoch end)
        u[idx], visited[idx] = out.state.double().cpu(), 1.0
    return out


def _average_state(accelerator, u: torch.Tensor, visited: torch.Tensor, reset: bool) -> None:
    """Epoch end: u of each id averaged over the processes that visited it (upstream DFT)."""
    device = accelerator.device
    total = accelerator.reduce((u * visited).to(device), "sum").cpu()
    count = accelerator.reduce(visited.to(device), "sum").cpu()
    u.copy_(torch.where(count > 0, total / count.clamp(min=1), u))
    if reset:
        visited.zero_()


def _save(model, state_dict, tokenizer, log, args, hp, inputs, batching) -> None:
    with atomic_path(f"{args.outdir}/model") as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    with atomic_path(f"{args.outdir}/train_log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(entry, sort_keys=True) + "\n" for entry in log))
    write_json(f"{args.outdir}/run.json", {
        "run": args.run, "method": hp["method"], "hyperparameters": hp, "seed": hp["seed"], **batching,
        "base_model": {"model": args.model, "revision": args.revision},
        "reference": {"model": args.ref_model, "revision": args.ref_revision,
                      "source": "cache" if args.refcache else ("live" if args.ref_model else None)},
        "digests": {**inputs, "final_weights": weights_digest(f"{args.outdir}/model")},
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
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="the config entries of the run's models allow their own code")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args, json.loads(args.params))


if __name__ == "__main__":
    run_cli(main)
