"""Start a stage in one process, or under `accelerate launch` with N processes (DDP or DeepSpeed).

`python -m workflow_scripts.launch --processes N [--deepspeed deepspeed_zero3] -- <module> <args>`
runs `python -m <module> <args>` when N is 1 without DeepSpeed, else `accelerate launch` with the
config from the project's `accelerate/` folder (resolved here, so rule params hold no absolute
paths) and a rendezvous port the OS reports free at launch (jobs sharing a node do not collide, nor
does a port another process holds: a port derived from the arguments could fall on one).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "accelerate"


def free_port() -> int:
    """A TCP port no process on this machine listens on now (the OS's choice for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, deepspeed: str | None, module: str, args: list[str]) -> list[str]:
    if processes == 1 and not deepspeed:
        return [sys.executable, "-m", module, *args]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
              "--num_machines", "1", "--main_process_port", str(free_port())]
    if deepspeed:
        config = ACCELERATE_CONFIGS / f"{deepspeed}.yaml"
        if not config.is_file():
            raise SystemExit(f"{config}: no such accelerate config")
        launch += ["--config_file", str(config)]
    else:  # DDP; on CPU the trainer selects gloo (`--cpu` would silently start one process)
        launch += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "-m", module, *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--deepspeed", default=None)
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    a = parser.parse_args()
    cmd = command(a.processes, a.deepspeed, a.module, a.args)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
