"""The plan of every config, kept: each job's rule, wildcards, outputs, data inputs, log and shell
command from a dry run from scratch, against the copy in tests/golden/plans/. A refactoring of the
rules or the planning code must leave them identical; a change that means to alter a plan rewrites
the copies (`UPDATE_GOLDEN_PLANS=1 pytest tests/test_plan_golden.py`) and the diff shows what changed.

Left out: job ids, timestamps and reasons (they depend on the order snakemake visits the DAG), and the
repository's own files among a job's inputs (the code a job depends on: moving a function to another
module changes them, not the plan), and the width of the blanks between a shell command's words."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from test_experiments import ROOT, snakemake

GOLDEN = ROOT / "tests/golden/plans"
CONFIGS = [ROOT / "config.yaml", ROOT / "tests/configs/mini.yaml", *sorted((ROOT / "experiments").glob("*.yaml"))]
KEPT = ("input", "output", "log", "benchmark", "wildcards", "threads", "resources")


def job_blocks(text: str, workdir: Path) -> list[str]:
    """The dry run's jobs, each as its kept lines with the repository and the working directory as
    placeholders, sorted (snakemake's printing order follows its DAG traversal)."""
    text = text.replace(str(workdir), "<workdir>").replace(str(ROOT), "<repo>")
    blocks = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines()]
        if not any(re.match(r"(local)?rule \w+:$", line) for line in lines):
            continue
        kept = []
        for i, line in enumerate(lines):
            key = line.split(":", 1)[0]
            if key == "Shell command":  # the command, with any lines it continues on; runs of blanks as one
                kept += [" ".join(line.split()) for line in lines[i:]]
                break
            if key == "input":
                files = [f.strip() for f in line.split(":", 1)[1].split(", ")]
                line = "input: " + ", ".join(f for f in files if f and not f.startswith("<repo>"))
            elif key == "resources":  # less the temporary directory, which is the machine's
                items = [r.strip() for r in line.split(":", 1)[1].split(", ")]
                line = "resources: " + ", ".join(r for r in items if r and not r.startswith("tmpdir="))
            if key in KEPT or re.match(r"(local)?rule \w+:$", line):
                kept.append(line)
        blocks.append("\n".join(kept))
    return sorted(blocks)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_the_plan_is_the_kept_one(config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_PYTHON", "/opt/vllm/bin/python")  # vLLM jobs' interpreter: the same on every machine
    result = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--configfile", str(config))  # threads are capped by cores
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    plan = "\n\n".join(job_blocks(result.stdout + result.stderr, tmp_path)) + "\n"
    golden = GOLDEN / (str(config.relative_to(ROOT).with_suffix(".txt")).replace("/", "_"))
    if os.environ.get("UPDATE_GOLDEN_PLANS"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(plan)
    assert golden.exists(), f"no kept plan for {config}: run with UPDATE_GOLDEN_PLANS=1"
    assert plan == golden.read_text(), f"the plan of {config.name} changed (UPDATE_GOLDEN_PLANS=1 keeps the new one)"
