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
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed
from tqdm import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from . import chat_templates, checkpoint, tracking
from .bmc import edit_masks, stopword_ids
from .config import run_settings
from .distributed import make_accelerator, precision, prepare_reference, start_processes
from .encoded import EncodedRecords, encode_once
from .io import InputError, run_cli, sha256_file, write_json, write_jsonl
from .logprobs import forward_logps
from .losses import LOSSES, Batch, kto_kl
from .methods import METHODS, negative_columns, negatives_required, refcache_settings
from .models import load_model, load_tokenizer, save_model_folder, template_digest, tokenizer_digest, weights_digest
from .records import iter_pairs
from .reference_cache import RefCache, expected_digests
from .versions import package_versions

SCHEDULES = {"cosine": get_cosine_schedule_with_warmup, "constant": get_constant_schedule_with_warmup}
PREEMPTED_EXIT = 143
# what a record's encoded tokens and truncation depend on, besides the tokenizer and the data
ENCODING_KEYS = ("prompt_format", "response_format", "max_length", "max_prompt_length", "over_long_prompts")


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

    def __init__(self, args, hp: dict, method, accelerator, policy, data_digest: str):
        self.method, self.cache, self.model, self.policy = method, None, None, None
        if args.refcache:
            expected = expected_digests(args.ref_model, args.ref_revision, data_digest, refcache_settings(hp),
                                        args.chat_template)
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


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which an epoch reads the run's n records (seeded per epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


class Trainer:
    """One run on this process: its data, policy, reference and progress. `run()` trains to the end (then
    saves the model and the run's records) or to a preemption (then checkpoints and exits for requeue)."""

    def __init__(self, args, hp: dict):
        self.args, self.hp, self.method = args, hp, METHODS[hp["method"]]
        self.world = start_processes().num_processes
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.world:
            raise RuntimeError(f"the launcher started {launched} processes but accelerate sees {self.world}")
        self.keys = [(r["id"], r.get("label")) for r in self._records()]  # each process: keys, not texts
        self.accum, self.steps_per_epoch = plan_batches(len(self.keys), hp, self.world)
        if self.steps_per_epoch == 0:
            raise InputError(args.data, f"{len(self.keys)} examples are fewer than one batch of {hp['batch_size']}")
        trackers = tracking.tracker_names(args.report_to)
        self.accelerator = make_accelerator(hp, self.accum, trackers, f"{args.outdir}/tracking")
        tracking.start(self.accelerator, trackers, args.project, f"{args.run}/seed{hp['seed']}", hp)
        set_seed(hp["seed"])
        self.total_steps = self.steps_per_epoch * hp["epochs"]
        self.tokenizer = load_tokenizer(args.model, args.revision, args.trust_remote_code, args.chat_template)
        data_digest = sha256_file(args.data)
        self.encoded = self._encoded_records(data_digest)
        self.model, self.optimizer, self.scheduler = _prepared_policy(self.accelerator, args, hp, self.total_steps)
        self.reference = Reference(args, hp, self.method, self.accelerator, self.model, data_digest) \
            if self.method.needs_ref else None
        self.stopwords = stopword_ids(self.tokenizer) if self.method.edit_mask else None
        self.share_prompts = not hp["gradient_checkpointing"]  # checkpointed layers keep no KV cache to share
        self.slot = {key[0]: i for i, key in enumerate(self.keys)}
        self.inputs = {"base_weights": weights_digest(args.model, args.revision), "data": data_digest,
                       **template_digest(args.chat_template),
                       **({"refcache": self.reference.cache.sha256} if args.refcache else {})}
        self.fingerprint = checkpoint.fingerprint(hp, {**self.inputs, "world_size": self.world})
        self._resume()

    def _records(self):
        """The run's records, validated, one at a time (records.iter_pairs)."""
        hp = self.hp
        return iter_pairs(self.args.data, negatives_required(hp["method"], hp),
                          f"run '{self.args.run}' ({hp['method']}, m={hp.get('m')}, epochs={hp['epochs']}, "
                          f"sample={hp.get('sample')})", labelled=bool(hp.get("unpaired")))

    def _encoded_records(self, data_digest: str) -> EncodedRecords:
        """The records tokenised once, by the main process (workflow_scripts/encoded.py), then mapped by all."""
        args, hp, folder = self.args, self.hp, Path(self.args.outdir) / "checkpoints" / "encoded"
        n_negatives = negatives_required(hp["method"], hp)
        fingerprint = {"tokenizer": tokenizer_digest(args.model, args.revision, args.chat_template), "data": data_digest,
                       "negatives": n_negatives, "kl_pairs": self.method.kl_pairs,
                       "settings": {k: hp.get(k) for k in ENCODING_KEYS}}
        error = None
        if self.accelerator.is_main_process:
            try:
                if encode_once(folder, fingerprint, self.tokenizer, self._records(), len(self.keys), n_negatives, hp,
                               self.method.kl_pairs, args.data):
                    print(f"encoded {len(self.keys)} records once, for every process and epoch", flush=True)
            except (InputError, ValueError) as e:
                error = e
        if _agree(self.accelerator, error is not None):
            raise error or RuntimeError("the main process refused the data (its error is above)")
        return EncodedRecords(folder, self.keys, hp, self.method.kl_pairs, args.data)

    def _resume(self) -> None:
        """Progress from the newest intact checkpoint of this run, or from the start."""
        self.log, self.step, self.n_truncated = [], 0, 0
        state = {"u": torch.zeros(len(self.keys), dtype=torch.float64),
                 "visited": torch.zeros(len(self.keys), dtype=torch.float64)}
        self.resumed_from = checkpoint.latest(self.accelerator, self.args.outdir, self.fingerprint)
        if self.resumed_from is not None:
            saved, loaded = checkpoint.load(self.accelerator, self.resumed_from)
            self.log, self.step, self.n_truncated = saved["log"], saved["step"], saved["responses_truncated"]
            state = {k: v.clone() for k, v in loaded.items()}
            self.accelerator.print(f"resumed from {self.resumed_from} (step {self.step} of {self.total_steps})")
        self.u, self.visited = state["u"], state["visited"]

    def run(self) -> None:
        preemption = Preemption()
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.args.run}", mininterval=5,
                        disable=not self.accelerator.is_main_process)
        for epoch in range(self.step // self.steps_per_epoch, self.hp["epochs"]):
            columns = negative_columns(self.hp["method"], self.hp, epoch)
            if self.step == epoch * self.steps_per_epoch:
                self.n_truncated += self.encoded.responses_truncated(columns)
            order = epoch_order(len(self.encoded), self.hp["seed"], epoch)
            for s in range(self.step - epoch * self.steps_per_epoch, self.steps_per_epoch):
                batch = order[s * self.hp["batch_size"]: (s + 1) * self.hp["batch_size"]]
                self._optimizer_step(batch, columns, epoch + (s + 1) / self.steps_per_epoch,
                                     epoch_end=s == self.steps_per_epoch - 1)
                self._checkpoint_if_due(_agree(self.accelerator, preemption.requested))
        self.bar.close()
        self._finish()

    def _optimizer_step(self, batch: list[int], columns: list[int], epoch: float, epoch_end: bool) -> None:
        """This process's micro-batches of one global batch (record indices), then one optimizer step, logged."""
        micro, rank = self.hp["micro_batch_size"], self.accelerator.process_index
        mine = [self.encoded.example(i, columns)
                for i in batch[rank * self.accum * micro: (rank + 1) * self.accum * micro]]
        chunks = [mine[k * micro: (k + 1) * micro] for k in range(self.accum)]
        totals = self._accumulate(chunks, len(batch), columns)
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.hp["max_grad_norm"])
        self.optimizer.step(), self.scheduler.step(), self.optimizer.zero_grad()
        self.step += 1
        if self.method.stateful and self.world > 1 and epoch_end:
            _average_state(self.accelerator, self.u, self.visited, self.hp["reset_visited"])
        loss = self.accelerator.reduce(torch.tensor(totals["loss"], device=self.accelerator.device), "mean").item()
        self.log.append({"step": self.step, "epoch": epoch, **totals, "loss": loss,
                         "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)})
        tracking.log_step(self.accelerator, self.log[-1])
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def _accumulate(self, chunks: list[list], batch_size: int, columns: list[int]) -> dict[str, float]:
        """Forward and backward of this process's micro-batches of one optimizer step; their mean metrics."""
        totals: dict[str, float] = {}
        for chunk in chunks:
            # syncs (DDP) and steps (DeepSpeed's engine) at the last micro-batch of the step only
            with self.accelerator.accumulate(self.model):
                out = self._micro_step(chunk, columns)
                # weight of this micro-batch in the global mean; accelerate (or the DeepSpeed engine)
                # divides by gradient_accumulation_steps itself, and DDP averages over processes
                self.accelerator.backward(out.loss * len(chunk) * self.world * len(chunks) / batch_size)
            for key, value in {"loss": out.loss.item(), **out.metrics}.items():
                totals[key] = totals.get(key, 0.0) + value / len(chunks)
        return totals

    def _micro_step(self, chunk: list, columns: list[int]):
        """The loss of one micro-batch (and, for a stateful method, its examples' new state)."""
        pad_id, method = self.tokenizer.pad_token_id, self.method
        fwd = forward_logps(self.model, chunk, pad_id, self.share_prompts)
        batch = Batch(fwd.logps, fwd.mask)
        if chunk[0].label is not None:
            batch.labels = torch.tensor([e.label for e in chunk])
        if self.reference is not None:
            self.reference.fill(batch, chunk, columns, pad_id, self.share_prompts)
        if method.edit_mask:
            batch.edit_mask = edit_masks(fwd.input_ids, self.stopwords)
        state = None
        if method.kl_pairs:
            batch.kl_logps = fwd.kl_logps
            state = self.accelerator.reduce(kto_kl(batch), "mean")  # TRL: gathered over processes, then clamped
        elif method.stateful:
            idx = torch.tensor([self.slot[e.id] for e in chunk])
            state = self.u[idx].to(fwd.logps.device, fwd.logps.dtype)
        out = LOSSES[self.hp["method"]](batch, self.hp, state)
        if method.stateful:  # this process's examples get their new u (averaged over processes at epoch end)
            self.u[idx], self.visited[idx] = out.state.double().cpu(), 1.0
        return out

    def _checkpoint_if_due(self, preempted: bool) -> None:
        """A checkpoint every `checkpoint_every` steps, and on preemption (then exit for requeue)."""
        every = self.hp.get("checkpoint_every") or 0
        if self.step < self.total_steps and (preempted or (every and self.step % every == 0)):
            checkpoint.save(self.accelerator, self.args.outdir, self.step, {
                "fingerprint": self.fingerprint, "log": self.log, "responses_truncated": self.n_truncated},
                {"u": self.u, "visited": self.visited}, keep=self.hp["keep_checkpoints"])
        if preempted:
            self.bar.close()
            self.accelerator.print(f"preempted: checkpoint at step {self.step} saved; exiting for requeue")
            sys.exit(PREEMPTED_EXIT)

    def _finish(self) -> None:
        """Save the whole model (ZeRO-3 partitions gathered, LoRA merged) and the run's records; drop checkpoints."""
        accelerator, hp = self.accelerator, self.hp
        state_dict, unwrapped = None, accelerator.unwrap_model(self.model)
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            state_dict = accelerator.get_state_dict(self.model)  # gathers ZeRO-3 partitions (a collective)
        elif hp.get("lora") and accelerator.is_main_process:
            unwrapped = merged_lora(unwrapped, self.args, hp)
        if accelerator.is_main_process:
            _save(unwrapped, state_dict, self.tokenizer, self.log, self.args, hp, self.inputs, self._batching())
        accelerator.wait_for_everyone()
        checkpoint.remove_all(accelerator, self.args.outdir)
        accelerator.end_training()

    def _batching(self) -> dict:
        """How the run was laid out over processes and steps (recorded in run.json)."""
        per_epoch = self.steps_per_epoch * self.hp["batch_size"]
        return {"distributed_type": str(self.accelerator.distributed_type).split(".")[-1],
                "device": str(self.accelerator.device), "world_size": self.world,
                "gradient_accumulation_steps": self.accum, "effective_global_batch": self.hp["batch_size"],
                "optimizer_steps": self.total_steps, "examples_per_epoch": per_epoch,
                "examples_dropped_per_epoch": len(self.keys) - per_epoch, "responses_truncated": self.n_truncated,
                "resumed_from_step": int(self.resumed_from.name[4:]) if self.resumed_from else None}


def _agree(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any process (a preemption signal, a refused input)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item())


def _average_state(accelerator, u: torch.Tensor, visited: torch.Tensor, reset: bool) -> None:
    """Epoch end: u of each id averaged over the processes that visited it (upstream DFT)."""
    device = accelerator.device
    total = accelerator.reduce((u * visited).to(device), "sum").cpu()
    count = accelerator.reduce(visited.to(device), "sum").cpu()
    u.copy_(torch.where(count > 0, total / count.clamp(min=1), u))
    if reset:
        visited.zero_()


def _save(model, state_dict, tokenizer, log, args, hp, inputs, batching) -> None:
    def write(tmp):
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    final_weights = save_model_folder(f"{args.outdir}/model", write)
    write_jsonl(f"{args.outdir}/train_log.jsonl", log)
    write_json(f"{args.outdir}/run.json", {
        "run": args.run, "method": hp["method"], "hyperparameters": hp, "seed": hp["seed"], **batching,
        "base_model": {"model": args.model, "revision": args.revision}, "data": args.data,
        "reference": {"model": args.ref_model, "revision": args.ref_revision,
                      "source": "cache" if args.refcache else ("live" if args.ref_model else None)},
        "digests": {**inputs, "final_weights": final_weights},
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
    parser.add_argument("--report-to", default="", help="comma-separated accelerate trackers (workflow_scripts/tracking.py)")
    parser.add_argument("--project", default="post-training", help="the trackers' project")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="the config entries of the run's models allow their own code")
    chat_templates.add_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    Trainer(args, run_settings(json.loads(args.params))).run()


if __name__ == "__main__":
    run_cli(main)
