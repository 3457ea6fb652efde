"""Machine peak (dense matmul rate) and the memory of the sequence log-prob / loss computation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from .common import ROOT


def peak_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> float:
    """Dense matmul FLOP/s of this machine with torch (the denominator of FLOP utilisation)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def matmul_parameters(model) -> int:
    """Parameters that take part in matmuls (everything but the input embedding)."""
    return sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)


def training_flops(model, computed_tokens: int, mean_len: float) -> float:
    """Model FLOPs of training on `computed_tokens` tokens (forward + backward: 6 N per token, N the matmul
    parameters, plus 12 L d T for the attention scores at mean row length T; recomputation not counted)."""
    cfg = model.config
    return computed_tokens * (6 * matmul_parameters(model) + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_len)


def _status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


class StepPeaks:
    """Each training step's peak memory over the memory held when it began (call `begin` and `end` around
    a step); the first step, which allocates the gradients and the optimizer's state, is left out."""

    def __init__(self):
        self.peaks, self.before = [], 0

    def begin(self) -> None:
        _reset_peak()
        self.before = _status_bytes("VmRSS")

    def end(self) -> None:
        self.peaks.append(_status_bytes("VmHWM") - self.before)

    def step_peak(self) -> int | None:
        return max(self.peaks[1:], default=None)


def loss_memory_child(variant: str, b: int, t: int, v: int) -> dict:
    """Run in a fresh process: extra peak RSS of forward + backward of the summed label log-probs."""
    from workflow_scripts.logprobs import token_logps

    torch.manual_seed(0)
    logits = torch.randn(b, t, v).requires_grad_()
    ids = torch.randint(0, v, (b, t))
    mask = torch.ones(b, t, dtype=torch.bool)
    _reset_peak()
    baseline = _status_bytes("VmRSS")
    if variant == "ours":
        logps, m = token_logps(logits, ids, mask)
    else:  # the naive way: a full log-softmax kept for backward
        full = torch.log_softmax(logits[:, :-1], dim=-1)
        logps = full.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    logps.sum().backward()
    peak = _status_bytes("VmHWM")
    logits_bytes = logits.numel() * logits.element_size()
    return {"logits_mb": logits_bytes / 2**20, "extra_peak_mb": (peak - baseline) / 2**20,
            "extra_peak_over_logits": (peak - baseline) / logits_bytes}


def loss_memory(b: int = 4, t: int = 512, v: int = 32000) -> dict:
    """Ours against a naive full log-softmax, each in its own process (peak RSS is per process)."""
    out = {}
    for variant in ("ours", "naive"):
        code = (f"import json; from bench.kernels import loss_memory_child; "
                f"print(json.dumps(loss_memory_child({variant!r}, {b}, {t}, {v})))")
        # a fixed mmap threshold: freed tensors go back to the OS at once, so RSS measures tensors, not
        # glibc's retention (which otherwise adds 0-30% at random)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                              env=env)
        out[variant] = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    ratio = out["ours"]["extra_peak_over_logits"]
    return {**out, "shape": [b, t, v], "goal": "loss peak memory <= 1.2x the logits tensor", "met": ratio <= 1.2}
