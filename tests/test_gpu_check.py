"""`make gpu-check` (bench/gpu_check.py) on this CPU: every check runs through the workflow's own stage
commands and reports; only the CUDA-only QLoRA check is skipped, naming why."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_a_cpu_and_reports_each_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    small = ["--hidden", "64", "--layers", "2", "--examples", "32"]  # bf16 is emulated on CPUs without bf16 units
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out), *small], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    checks = result["checks"]
    assert result["cuda"] is False
    assert checks["qlora"] == {"status": "skipped", "reason": "bitsandbytes' 4-bit base needs CUDA",
                               "seconds": checks["qlora"]["seconds"]}
    for name in ("train_bf16_sdpa_checkpointing", "deepspeed_zero3", "vllm_generation", "stages_on_device"):
        assert checks[name]["status"] == "ok", (name, checks[name])
    assert checks["train_bf16_sdpa_checkpointing"]["distributed_type"] == "NO"
    assert checks["deepspeed_zero3"]["distributed_type"] == "DEEPSPEED"
    assert checks["train_bf16_sdpa_checkpointing"]["device"] == checks["deepspeed_zero3"]["device"] == "cpu"
    assert checks["vllm_generation"]["requests"] == 32
    placed = {k: v for k, v in checks["stages_on_device"].items() if k not in ("status", "seconds")}
    assert placed == {"refcache": "cpu", "hf_generation": "cpu", "lm_eval_hf": "cpu"}
