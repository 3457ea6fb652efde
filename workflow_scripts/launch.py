"""Start a stage in one process, or under `accelerate launch` with N processes (DDP or DeepSpeed).

`python -m workflow_scripts.launch --processes N [--deepspeed deepspeed_zero3] -- <module> <args>`
runs `python -m <module> <args>` when N is 1 without DeepSpeed, else `accelerate launch` with the
config from the project's `accelerate/` folder (resolved here, so rule params hold no absolute
paths) and a rendezvous port the OS reports free at launch (jobs sharing a node do not collide, nor
does a port another process holds: a port derived from the arguments could fall on one).

With `--nodes M` (M > 1) it runs once per node of a SLURM allocation (`srun --ntasks-per-node=1`, as the
train rule does for a run's `nodes`): N processes on each node, M x N in all; the node's rank is
SLURM_NODEID, the rendezvous is the first node's address (its NodeAddr, from scontrol) at a port derived
from the job id, the same on every node (the first node refuses it if another process holds it).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "accelerate"


def free_port() -> int:
    """A TCP port no process on this machine listens on now (the OS's choice for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machines(nodes: int) -> list[str]:
    """accelerate's machine arguments: this machine alone, or this node of the SLURM allocation."""
    if nodes == 1:
        return ["--num_machines", "1", "--main_process_port", str(free_port())]
    missing = [v for v in ("SLURM_JOB_ID", "SLURM_NODEID", "SLURM_JOB_NODELIST") if v not in os.environ]
    if missing:
        raise SystemExit(f"--nodes {nodes} runs one launcher per node of a SLURM allocation "
                         f"(srun --ntasks-per-node=1); {', '.join(missing)} not set")
    port = 20000 + int(os.environ["SLURM_JOB_ID"]) % 20000
    if os.environ["SLURM_NODEID"] == "0":
        check_port_free(port)
    return ["--num_machines", str(nodes), "--machine_rank", os.environ["SLURM_NODEID"],
            "--main_process_ip", first_node_address(os.environ["SLURM_JOB_NODELIST"]),
            "--main_process_port", str(port)]


def check_port_free(port: int) -> None:
    """Refuse, by name, a rendezvous port another process holds on the first node (the job then fails at once,
    and its retry, a new job id, derives another port), rather than leaving the other nodes to wait on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a socket closed moments ago is no hold
        try:
            s.bind(("", port))
        except OSError as e:
            raise SystemExit(f"the rendezvous port {port} (20000 + SLURM_JOB_ID mod 20000) is held on "
                             f"{socket.gethostname()}, the job's first node: {e}") from e


def first_node_address(nodelist: str) -> str:
    """The address of the allocation's first node (its NodeAddr), where the rendezvous listens."""
    first = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           check=True).stdout.split()[0]
    node = subprocess.run(["scontrol", "show", "node", first, "-o"], capture_output=True, text=True, check=True).stdout
    return next(field.split("=", 1)[1] for field in node.split() if field.startswith("NodeAddr="))


def command(processes: int, deepspeed: str | None, module: str, args: list[str], nodes: int = 1) -> list[str]:
    if processes == 1 and nodes == 1 and not deepspeed:
        return [sys.executable, "-m", module, *args]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes * nodes),
              *machines(nodes)]
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
    parser.add_argument("--nodes", type=int, default=1, help="nodes of a SLURM allocation, one launcher on each")
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    a = parser.parse_args()
    cmd = command(a.processes, a.deepspeed, a.module, a.args, a.nodes)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
