"""A config of paper-grid size (200 runs): it plans, and its tables and manifest build, though its resolved config
and a table's eval-file list are each larger than one command-line argument may be (128 KiB on Linux)."""
import json
import random

import yaml

from test_workflow import MINI, planned_jobs, snakemake, write_config

RUNS = 200
ARG_MAX = 128 * 1024  # Linux's MAX_ARG_STRLEN: one argument of execve


def big_config() -> dict:
    mini = yaml.safe_load(MINI.read_text())
    runs = {f"sft_{i:03d}": {**mini["runs"]["sft"], "lr": 1e-3 * (1 + i / RUNS), "seeds": [1, 2, 3]}
            for i in range(RUNS)}
    table = {**mini["tables"]["mini_table"], "rows": ["mini", *runs], "columns": mini["tables"]["mini_table"]["columns"][:2]}
    return {**mini, "runs": runs, "evals": {"toy_eval": mini["evals"]["toy_eval"]}, "tables": {"big": table}}


def fake_results(workdir, config: dict) -> None:
    """What the tables and the manifest read, as the upstream stages would write it."""
    rng = random.Random(0)
    subjects = ["mini/base"] + [f"{run}/seed{s}" for run, r in config["runs"].items() for s in r["seeds"]]
    for subject in subjects:
        scores = {"toy_gen": {"exact_match": rng.random(), "stderr": {"exact_match": 0.01}},
                  "toy_mc": {"acc": rng.random(), "acc_norm": rng.random(), "stderr": {"acc": 0.02}}}
        path = workdir / f"results/eval/{subject}/toy_eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"scores": scores, "protocol": {"summary": "toy protocol"}}))
        if subject != "mini/base":
            (workdir / f"results/train/{subject}").mkdir(parents=True, exist_ok=True)
            (workdir / f"results/train/{subject}/model_card.md").write_text(f"card of {subject}\n")
            (workdir / f"results/plots/{subject}.png").parent.mkdir(parents=True, exist_ok=True)
            (workdir / f"results/plots/{subject}.png").write_bytes(b"png")


def test_a_200_run_config_plans_and_builds_its_tables_and_manifest(tmp_path):
    config = big_config()
    path = write_config(tmp_path / "big.yaml", config)
    planned = planned_jobs(snakemake(tmp_path, "-n", "--configfile", path))
    assert planned["train"] == RUNS * 3 and planned["evaluate"] == RUNS * 3 + 1 and planned["table"] == 1
    fake_results(tmp_path, config)
    result = snakemake(tmp_path, "--cores", "1", "--configfile", path, "--allowed-rules", "table", "manifest",
                       "--", "results/manifest.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "results/manifest.json").read_text())
    assert len(json.dumps(manifest["config"])) > ARG_MAX  # the config the command line could not have carried
    assert set(manifest["config"]["runs"]) == set(config["runs"])
    rows = (tmp_path / "results/tables/big.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + RUNS and rows[-1].startswith("sft_199")
