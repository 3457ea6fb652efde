"""Snakemake as the tests run it: on this repository's Snakefile, with this interpreter first on PATH,
offline (nothing is downloaded), under `timeout -k` so that a hang fails the test instead of the suite."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def environment(**extra: str) -> dict:
    """The environment now (a test's monkeypatched variables included), offline, this interpreter first."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


ENV = environment()


def snakemake(workdir, *args, timeout: int = 900, env: dict | None = None, stdout=None):
    """`snakemake -s Snakefile -d workdir *args`, its output captured; with `stdout` (an open file) started in
    the background instead (a Popen)."""
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
           "-d", str(workdir), *args]
    if stdout is not None:
        return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, text=True, env=environment(**(env or {})))
    return subprocess.run(cmd, capture_output=True, text=True, env=environment(**(env or {})))
