"""Training checkpoints: everything a killed run needs to end with the same weights as an uninterrupted one.

`<outdir>/checkpoints/step<N>/` holds accelerate's state (model as safetensors, optimizer,
scheduler, RNG states; DeepSpeed's ZeRO shards under DeepSpeed), `trainer_state.json` (step,
the training log so far, and the fingerprint of the run's inputs) and one
`method_state.rank<R>.safetensors` per process (DFT's per-example u and visited mask: within an
epoch each process updates the examples it saw, and the processes average them at its end). A
checkpoint is written to a temporary folder and renamed when whole; one whose fingerprint differs from the run's (changed hyper-parameters,
data or model) is never resumed from.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step(\d+)$")


def fingerprint(hp: dict, digests: dict) -> str:
    """Digest of what determines the run: hyper-parameters and input digests."""
    blob = json.dumps({"hp": hp, "inputs": digests}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def latest(outdir: str, expected_fingerprint: str) -> Path | None:
    """The newest whole checkpoint of this run, or None; stale ones (other fingerprint) are ignored."""
    root = Path(outdir) / "checkpoints"
    if not root.is_dir():
        return None
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        state = path / "trainer_state.json"
        if match and state.is_file() and json.loads(state.read_text())["fingerprint"] == expected_fingerprint:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def save(accelerator, outdir: str, step: int, trainer_state: dict, method_state: dict[str, torch.Tensor],
         keep: int) -> Path:
    """Write checkpoint `step<step>` atomically (all processes call this); keep the newest `keep`."""
    root = Path(outdir) / "checkpoints"
    final, tmp = root / f"step{step}", root / f"step{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    save_file({k: v.contiguous() for k, v in method_state.items()}, str(_method_state_file(tmp, accelerator)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, sort_keys=True))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        steps = sorted(int(STEP_DIR.match(p.name).group(1)) for p in root.iterdir() if STEP_DIR.match(p.name))
        for old in steps[:-keep]:
            shutil.rmtree(root / f"step{old}")
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore accelerate's state from `path`; return (trainer_state, method_state)."""
    accelerator.load_state(str(path))
    return json.loads((path / "trainer_state.json").read_text()), load_file(str(_method_state_file(path, accelerator)))


def _method_state_file(folder: Path, accelerator) -> Path:
    return folder / f"method_state.rank{accelerator.process_index}.safetensors"


def remove_all(accelerator, outdir: str) -> None:
    if accelerator.is_main_process:
        shutil.rmtree(Path(outdir) / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
