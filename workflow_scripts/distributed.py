"""A training run's processes and precision: one process, DDP, or DeepSpeed ZeRO-2/3, on GPUs or this CPU.

- Precision (`dtype` of a run): `bfloat16` / `float16` train *mixed*, as the recipes do: the weights
  are loaded and kept in float32 (the master copy the optimizer steps, with its state in float32),
  the forward and backward run in the half dtype (accelerate's autocast; DeepSpeed's bf16 / fp16
  mode). `precision: pure` keeps the weights and AdamW's state in the half dtype instead (at the
  recipes' learning rates most such updates round to nothing; only for a run that asks for it).
- DeepSpeed on a machine without CUDA: DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`) over gloo.
  accelerate 1.15 only learns the process count from a backend it was given (otherwise it reports
  one process while DeepSpeed's world has N), so the state is created with `backend="gloo"`.
- DeepSpeed's micro-batch and global batch are set from the run, since no DataLoader is prepared.
"""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState

HALF = {"bfloat16": "bf16", "float16": "fp16"}


def uses_deepspeed() -> bool:
    """Whether `accelerate launch` started this process with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def precision(hp: dict) -> tuple[str, str]:
    """(dtype the weights are loaded and stepped in, accelerate's mixed_precision) of a run."""
    if hp["dtype"] in HALF and hp["precision"] == "mixed":
        return "float32", HALF[hp["dtype"]]
    return hp["dtype"], "no"


def start_processes() -> PartialState:
    """The process group: gloo between CPU processes (DDP or DeepSpeed), NCCL between GPUs."""
    if torch.cuda.is_available():
        return PartialState()
    if uses_deepspeed():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported
        return PartialState(backend="gloo")
    return PartialState(cpu=True)  # accelerate's MULTI_CPU (gloo) when launched with several processes


def make_accelerator(hp: dict, accum: int, trackers: list[str] = (), tracking_dir: str | None = None) -> Accelerator:
    """The run's Accelerator (logging to `trackers` under `tracking_dir`); under DeepSpeed its config gets
    the run's micro-batch (the global batch follows as micro x accumulation x processes) and clipping."""
    cpu = not torch.cuda.is_available() and not uses_deepspeed()
    # DeepSpeed's "auto" clipping takes the run's value; the engine then clips, not clip_grad_norm_
    os.environ["ACCELERATE_GRADIENT_CLIPPING"] = str(hp["max_grad_norm"])
    # the schedule counts optimizer steps of the global batch: accelerate must not step it once per process
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision(hp)[1], gradient_accumulation_steps=accum,
                              step_scheduler_with_optimizer=False, log_with=list(trackers) or None,
                              project_dir=tracking_dir)
    if accelerator.state.deepspeed_plugin is not None:
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = hp["micro_batch_size"]
    return accelerator


def prepare_reference(model, accelerator: Accelerator):
    """A frozen reference model ready on this process: under DeepSpeed an inference engine (ZeRO-3 shards
    it like the policy; TRL's `prepare_deepspeed`), else moved to the process's device."""
    if accelerator.state.deepspeed_plugin is not None:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    return model.to(accelerator.device).eval()
