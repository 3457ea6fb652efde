"""Training checkpoints: everything a killed run needs to end with the same weights as an uninterrupted one.

`<outdir>/checkpoints/step<N>/` holds accelerate's state (model as safetensors, optimizer,
scheduler, RNG states; DeepSpeed's ZeRO shards under DeepSpeed), `trainer_state.json` (step,
the training log so far, the fingerprint of the run's inputs and the sha256 of every other file) and one
`method_state.rank<R>.safetensors` per process (DFT's per-example u and visited mask: within an
epoch each process updates the examples it saw, and the processes average them at its end). A
checkpoint is written to a temporary folder and renamed when whole; one whose fingerprint differs from
the run's (changed hyper-parameters, data or model) is never resumed from, and a damaged one is skipped.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file

from .io import sha256_files

STEP_DIR = re.compile(r"^step(\d+)$")


def fingerprint(hp: dict, digests: dict) -> str:
    """Digest of what determines the run: hyper-parameters and input digests."""
    blob = json.dumps({"hp": hp, "inputs": digests}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def latest(accelerator, outdir: str, expected_fingerprint: str) -> Path | None:
    """The newest intact checkpoint of this run, or None. Stale ones (other fingerprint) are ignored; a damaged
    one (a file missing, changed or cut) is skipped, saying so, for the one before. The main process checks,
    the others follow its choice."""
    choice = [_newest_intact(Path(outdir) / "checkpoints", expected_fingerprint)
              if accelerator.is_main_process else None]
    return broadcast_object_list(choice)[0]


def _newest_intact(root: Path, expected_fingerprint: str) -> Path | None:
    steps = sorted(((int(m.group(1)), path) for path in root.iterdir() if (m := STEP_DIR.match(path.name))),
                   reverse=True) if root.is_dir() else []
    for _, path in steps:
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            print(f"checkpoint {path} skipped: no readable trainer_state.json", flush=True)
            continue
        if state["fingerprint"] != expected_fingerprint:
            continue
        damaged = _damaged_files(path, state.get("files", {}))
        if not damaged:
            return path
        print(f"checkpoint {path} skipped: {', '.join(damaged)} missing or not as written", flush=True)
    return None


def _damaged_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    """Names of the recorded files that are missing or whose content differs from the record."""
    present = sorted(name for name in recorded if (folder / name).is_file())
    digests = dict(zip(present, sha256_files([folder / name for name in present])))
    return [name for name in sorted(recorded) if digests.get(name) != recorded[name]]


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
    if accelerator.is_main_process:  # the file digests in trainer_state.json, written last, make it whole
        files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        digests = dict(zip(files, sha256_files([tmp / f for f in files])))
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step, "files": digests},
                                                           sort_keys=True))
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
