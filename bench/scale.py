"""Cost per record as the data grows to the papers' sizes: 4k, 61k (UltraFeedback) and 395k (MetaMathQA) records
with 12 negatives each, through the stages that read a whole dataset: the merge of the per-seed generation
files, a training run's one-time tokenisation (workflow_scripts/encoded.py), DPO-BMC's bridge (the
deterministic `synthetic_repair` editor, so what is measured is the stage: shards, edit distances, output)
and a reference cache of DPO's shape (chosen and first negative) on a Llama of one 64-wide layer, so that
the stage's own costs (streaming, shards, assembly) are not hidden under a 7B forward, whose cost per row
is flat anyway. Each stage runs in its own process, so its wall time and peak resident memory are its own.
Texts are the synthetic set's (short solutions), so the sizes on disk stay a few GB.

    python -m bench.scale [--sizes 4000 61000 395000]    (writes bench/scale.json)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workflow_scripts import synthetic_task
from workflow_scripts.io import write_json, write_jsonl

from .common import ROOT, machine, make_world, wrong
from .trainer import BASE, cache_params

NEGATIVES = 12
SIZES = [4000, 61000, 395000]
SETTINGS = {"max_length": 512, "max_prompt_length": 256, "prompt_format": None, "response_format": None}
# DPO's reference cache (chosen and first negative) over SETTINGS' lengths, as a run of the bench's trainer would
DPO = {**BASE, "method": "dpo", "epochs": 1, "max_length": SETTINGS["max_length"],
       "max_prompt_length": SETTINGS["max_prompt_length"]}
BRIDGE = {"editor": "synthetic_repair", "shard_size": 2048, "limit": None}  # the fields the stage reads with it


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program (VmHWM)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def child(stage: str, args: list[str]) -> None:
    """One stage in this fresh process: its time without the imports, and the process's peak memory."""
    from workflow_scripts import bridge, refcache
    from workflow_scripts.records import iter_pairs
    from workflow_scripts.encoded import encode_once
    from workflow_scripts.merge import main as merge_main
    from workflow_scripts.models import load_tokenizer

    base, start = peak_rss_mb(), time.perf_counter()
    if stage == "merge":
        merge_main(args)
    elif stage == "bridge":
        bridge.main(args)
    elif stage == "refcache":
        refcache.main(args)
    else:
        model, data, folder = args
        # as the trainer does: every process a pass for the keys, the main one a second pass that encodes
        keys = [(r["id"], r.get("label")) for r in iter_pairs(data, NEGATIVES)]
        encode_once(Path(folder), {}, load_tokenizer(model), iter_pairs(data, NEGATIVES), len(keys), NEGATIVES,
                    SETTINGS, False, data)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(),
                      "rss_after_imports_mb": base}))


def measured(stage: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--child", stage, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_inputs(root: Path, n: int) -> tuple[str, list[str]]:
    """The data split and one generation file per seed, n records each (a pool of 4k problems, cycled)."""
    rng = random.Random(0)
    pool = synthetic_task.make_splits(5, {"train": 4000}, 20)["train"]
    data = root / "data.jsonl"
    write_jsonl(data, ({"id": f"s-{i}", "prompt": [{"role": "user", "content": pool[i % 4000]["question"]}],
                        "chosen": pool[i % 4000]["answer"]} for i in range(n)))
    seeds = []
    for seed in range(NEGATIVES):
        path = root / f"seed{seed}.jsonl"
        write_jsonl(path, ({"id": f"s-{i}", "seed": seed, "text": wrong(pool[i % 4000]["answer"], rng),
                            "finish_reason": "stop"} for i in range(n)))
        seeds.append(str(path))
    return str(data), seeds


def stage_costs(root: Path, models: dict, n: int) -> dict:
    data, seeds = write_inputs(root, n)
    merged = root / "merged.jsonl"
    out = {"merge": measured("merge", "--data", data, "--seed-files", *seeds, "--output", str(merged)),
           "encode_once": measured("encode", models["bench"], str(merged), str(root / "encoded")),
           "bridge": measured("bridge", "--params", json.dumps(BRIDGE), "--source", str(merged),
                              "--output", str(root / "bridged.jsonl"), "--stats", str(root / "bridged.stats.json")),
           "refcache": measured("refcache", "--params", cache_params(DPO, batch_size=64), "--model", models["micro"],
                                "--data", str(merged), "--output", str(root / "reference.safetensors"))}
    for stage in out.values():
        stage["records_per_s"] = n / stage["seconds"]
    return out


def measure_sizes(sizes: list[int]) -> dict:
    """Each stage's cost at each size, and the cost of a record in the largest set over the smallest's."""
    results = {"negatives": NEGATIVES, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"bench": make_world(Path(tmp) / "world")[0],
                  "micro": make_world(Path(tmp) / "world", hidden=64, layers=1)[0]}
        for n in sizes:
            root = Path(tmp) / str(n)
            root.mkdir()
            results["sizes"][str(n)] = stage_costs(root, models, n)
            print(json.dumps({n: results["sizes"][str(n)]}), flush=True)
    small, large = results["sizes"][str(sizes[0])], results["sizes"][str(sizes[-1])]
    results["per_record_cost_ratio"] = {stage: small[stage]["records_per_s"] / large[stage]["records_per_s"]
                                        for stage in small}  # > 1: a record costs more in the large set
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1:])
    results = {"machine": machine(), **measure_sizes(args.sizes)}
    write_json(ROOT / "bench/scale.json", results)
    print(json.dumps(results["per_record_cost_ratio"]))


if __name__ == "__main__":
    main()
