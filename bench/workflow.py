"""Snakemake planning time of the experiments, a no-op rerun, and the embedded default stage by stage."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from .common import ROOT

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def snakemake(workdir: Path, *args: str, timeout: int = 3600) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def planned_jobs(text: str) -> int:
    if "Nothing to be done" in text:
        return 0
    return int(re.search(r"^total\s+(\d+)$", text, re.M).group(1))


def planning() -> dict:
    """Dry-run time and job count of every experiments/ config, from an empty working directory."""
    out = {}
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        with tempfile.TemporaryDirectory() as workdir:
            proc, seconds = snakemake(Path(workdir), "-n", "--configfile", str(path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[path.stem] = {"jobs": planned_jobs(proc.stdout + proc.stderr), "seconds": seconds}
    largest = max(out, key=lambda k: out[k]["jobs"])
    return {"configs": out, "largest": largest, "goal": "planning under 10 s", "met": out[largest]["seconds"] < 10}


def stage_times(log: Path) -> dict:
    """Per rule: jobs, summed and longest job wall time, from a snakemake log's timestamps."""
    lines = log.read_text().splitlines()
    started, rule_of, stats = {}, {}, {}
    for i, line in enumerate(lines):
        stamp = STAMP.match(line)
        if not stamp or i + 1 >= len(lines):
            continue
        when = datetime.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y")
        rule = re.match(r"^(?:local)?rule (\w+):$", lines[i + 1])
        if rule:
            jobid = next(int(m.group(1)) for m in map(re.compile(r"^\s+jobid: (\d+)$").match, lines[i + 2: i + 12]) if m)
            started[jobid], rule_of[jobid] = when, rule.group(1)
        done = re.match(r"^Finished jobid: (\d+)", lines[i + 1])
        if done and int(done.group(1)) in started:
            jobid = int(done.group(1))
            seconds = (when - started[jobid]).total_seconds()
            s = stats.setdefault(rule_of[jobid], {"jobs": 0, "seconds": 0.0, "longest": 0.0})
            s["jobs"], s["seconds"], s["longest"] = s["jobs"] + 1, s["seconds"] + seconds, max(s["longest"], seconds)
    return dict(sorted(stats.items(), key=lambda kv: -kv[1]["seconds"]))


def embedded_default() -> dict:
    """The whole default from scratch in a fresh directory (2 cores), then a no-op rerun."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, seconds = snakemake(workdir, "--cores", "2", "--configfile", str(ROOT / "config.yaml"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        log = max((workdir / ".snakemake/log").glob("*.snakemake.log"))
        jobs = planned_jobs(proc.stdout + proc.stderr)
        stages = stage_times(log)
        rerun, rerun_seconds = snakemake(workdir, "-n", "--configfile", str(ROOT / "config.yaml"))
    noop_jobs = planned_jobs(rerun.stdout + rerun.stderr)
    return {"wall_s": seconds, "jobs": jobs, "stages": stages, "noop_rerun": {"jobs": noop_jobs, "seconds": rerun_seconds},
            "goal": "embedded default under 10 minutes; no-op rerun 0 jobs", "met": seconds < 600 and noop_jobs == 0}
