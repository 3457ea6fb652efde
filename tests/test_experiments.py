"""Paper configs (experiments/*.yaml): each is complete on its own, pins every hub artifact, and its
dry run plans the paper's DAG (data -> generate per seed -> merge -> refcache -> train -> evaluate ->
tables) without downloading anything and without a trace of the embedded default's tiny world."""
import copy
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from transformers.utils.chat_template_utils import render_jinja_template

import workflow_runner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflow_scripts import plan as workflow_plan  # noqa: E402
from workflow_scripts.config import check_config  # noqa: E402
from workflow_scripts.methods import METHODS  # noqa: E402
from workflow_scripts.nltk_resources import needs_punkt  # noqa: E402

SCHEMA = ROOT / "schemas/config.schema.yaml"
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
HEX40 = re.compile(r"^[0-9a-f]{40}$")
# Names that only the embedded default (config.yaml) uses: none may leak into a paper plan.
DEFAULT_ONLY = ("results/models/", "results/raw/", "arith", "results/tables/main.")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def resolved(path: Path) -> dict:
    """The config as the workflow sees it: schema defaults filled in, SPIN iterations expanded."""
    return check_config(copy.deepcopy(load(path)), str(SCHEMA))


def ids(paths):
    return [p.stem for p in paths]


def test_there_is_one_config_per_paper_table():
    assert {p.stem for p in EXPERIMENTS} >= {"dft_general", "dft_math", "dynft", "dpo_lora", "dpo_bmc", "scdpo"}


# ------------------------------------------------------------------------------------- static


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_config_is_complete_and_pins_every_hub_artifact(path):
    """Every section given (`runs` may be empty: the released checkpoints train nothing); every hub artifact at a
    commit, or UNRESOLVED where the commit could not be looked up (pin_revisions writes it in before a run)."""
    config = load(path)
    for section in ("models", "datasets", "runs", "evals", "tables"):
        assert section in config and (config[section] or section == "runs"), \
            f"{path.name}: '{section}' missing (a --configfile replaces config.yaml)"
    for kind in ("models", "datasets"):
        for name, spec in config[kind].items():
            assert "build" not in spec, f"{path.name}: {kind}.{name} is built by the workflow (tiny world)"
            if "hf_id" in spec:
                revision = str(spec["revision"])
                assert HEX40.match(revision) or revision == "UNRESOLVED", f"{path.name}: {kind}.{name} revision"
                assert revision != "0" * 40, f"{path.name}: {kind}.{name}: a made-up commit; say UNRESOLVED"
    resolved(path)  # schema + cross-references, as at workflow start-up


def test_recipes_keep_the_upstream_numbers():
    """The key numbers of the upstream recipes, so that an edit of a recipe is a deliberate one."""
    general = load(ROOT / "experiments/dft_general.yaml")
    assert general["models"]["mistral7b"]["revision"] == "7231864981174d9bee8c7687c24c8344414eae6b"
    gen = general["generations"]["uf_neg"]
    assert gen["seeds"] == list(range(16)) and gen["max_new_tokens"] == 320
    assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (0.7, 1.0, 50)
    template = resolved(ROOT / "experiments/dft_general.yaml")["models"]["mistral7b"]["chat_template"]
    for g in (gen, general["runs"]["spin"]["generation"]):  # gen_uf.sh's prompt, through the recipe's template
        (prompt,), _ = render_jinja_template([[{"role": "system", "content": g["system_prompt"]}, {
            "role": "user", "content": "Hi"}]], chat_template=template, add_generation_prompt=True, eos_token="</s>")
        assert g["prompt_format"] is None and prompt == ("<|system|>\nYou are an unhelpful assistant.</s>\n<|user|>\n"
                                                         "Hi</s>\n<|assistant|>\n")
    runs = general["runs"]
    assert all((r["prompt_format"], r["response_format"]) == ("<|user|>\n{prompt}</s>\n",
                                                               "<|assistant|>\n{response}</s>\n") for r in runs.values())
    assert (runs["dft"]["tau"], runs["dft"]["gamma"], runs["dft"]["m"], runs["dft"]["sample"]) == (1.0, 0.85, 2, True)
    assert (runs["dft2"]["tau"], runs["dft2"]["gamma"], runs["dft2"]["method"]) == (0.3, 0.9, "dft2")
    for name in ("sft", "dft", "dft2"):
        r = runs[name]
        assert (r["lr"], r["batch_size"], r["micro_batch_size"], r["epochs"]) == (2e-6, 128, 4, 2)
        assert (r["max_length"], r["max_prompt_length"], r["dtype"], r["seeds"]) == (1024, 512, "bfloat16", [42])
        assert (r["adam_betas"], r["adam_eps"], r["weight_decay"], r["max_grad_norm"]) == ([0.9, 0.999], 1e-8, 0.0, 1.0)
    tasks = {t["task"]: (t["shots"], t["metric"]) for t in general["evals"]["leaderboard_v1"]["tasks"]}
    assert tasks == {"arc_challenge": (25, "acc_norm"), "hellaswag": (10, "acc_norm"), "mmlu": (5, "acc"),
                     "truthfulqa_mc2": (0, "acc"), "winogrande": (5, "acc"), "gsm8k": (5, "exact_match"),
                     "ifeval": (0, ["prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc",
                                    "inst_level_loose_acc"])}
    assert len(general["tables"]["dft_general"]["columns"]) == 7 and general["tables"]["dft_general"]["average"]
    assert [c["metric"] for c in general["tables"]["ifeval_detail"]["columns"]] == tasks["ifeval"][1]

    math = load(ROOT / "experiments/dft_math.yaml")
    gen = math["generations"]["mm_neg"]
    assert gen["seeds"] == list(range(12)) and gen["max_new_tokens"] == 256
    assert gen["prompt_format"].startswith("Below is an instruction") and "{prompt}" in gen["prompt_format"]
    assert all(r["prompt_format"] == gen["prompt_format"] for r in math["runs"].values())
    # the math table (the papers' protocol): greedy, 512 new tokens, the Alpaca prompt; GSM8K truth after "####"
    for answer_set in math["answer_sets"].values():
        assert (answer_set["temperature"], answer_set["max_new_tokens"]) == (0.0, 512)
        assert answer_set["prompt_format"].startswith("Below is an instruction") and "{prompt}" in answer_set["prompt_format"]
    assert math["datasets"]["gsm8k"]["mapping"]["answer_after"] == "####"
    assert {c["task"] for c in math["tables"]["dft_math"]["columns"]} == set(math["evals"]["math"]["answer_sets"])

    dyn = load(ROOT / "experiments/dynft.yaml")
    assert dyn["datasets"]["numina_cot"]["limit"] == 100000
    official, variant = dyn["runs"]["dynft"], dyn["runs"]["dynft_alpha08"]
    assert (official["alpha"], official["lr"], official["batch_size"], official["epochs"]) == (1.0, 5e-5, 256, 1)
    assert (official["adam_betas"], official["weight_decay"], official["max_length"], official["seeds"]) == \
        ([0.9, 0.95], 0.01, 2048, [1])
    assert (variant["alpha"], variant["lr"], variant["epochs"]) == (0.8, 1e-6, 2)
    assert dyn["runs"]["sft"]["method"] == "sft"

    lora = load(ROOT / "experiments/dpo_lora.yaml")["runs"]["dpo_lora"]
    assert lora["lora"] == {"r": 256, "alpha": 128, "dropout": 0.05, "target_modules": "all-linear",
                            "load_in_4bit": True}  # QLoRA, as upstream
    assert (lora["method"], lora["beta"], lora["lr"], lora["epochs"], lora["batch_size"], lora["max_grad_norm"]) == \
        ("dpo", 0.1, 5e-5, 1, 8, 0.3)
    assert (lora["max_length"], lora["max_prompt_length"]) == (1512, 1024)

    bmc = load(ROOT / "experiments/dpo_bmc.yaml")["runs"]
    assert {(r["beta"], r["delta"]) for r in bmc.values()} == {(0.01, 1.5), (0.01, 2.0)}
    assert all((r["lr"], r["batch_size"], r["max_length"], r["max_prompt_length"]) == (5e-7, 128, 2048, 1800)
               for r in bmc.values())

    sc = load(ROOT / "experiments/scdpo.yaml")["runs"]["scdpo"]
    assert (sc["method"], sc["beta"], sc["lr"], sc["epochs"], sc["batch_size"]) == ("scdpo", 0.5, 1e-7, 2, 16)
    assert (sc["max_length"], sc["max_prompt_length"], sc["micro_batch_size"], sc["processes"]) == (1024, 512, 2, 4)
    dyn_answers = load(ROOT / "experiments/dynft.yaml")["answer_sets"].values()
    assert all((a["max_new_tokens"], a["samples"], a["temperature"]) == (4096, 16, 1.0) for a in dyn_answers)
    spin = load(ROOT / "experiments/dft_general.yaml")["runs"]["spin"]["generation"]
    assert (spin["backend"], spin["dtype"]) == ("vllm", "bfloat16")  # as the generation of the other negatives


# ------------------------------------------------------------------------------------ dry runs


def snakemake(workdir: Path, *args, timeout=120):
    """A dry run's snakemake, with an empty hub cache of its own: planning reads nothing from the hub."""
    return workflow_runner.snakemake(workdir, *args, timeout=timeout, env={"HF_HOME": str(workdir / "hf_home")})


def job_stats(text: str) -> dict[str, int]:
    table = text.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def expected_jobs(config: dict) -> dict[str, int]:
    """The jobs a paper table needs, derived from the (resolved) recipe."""
    runs, generations, tables = config["runs"], config["generations"], config["tables"]
    needed, todo = set(), [row for t in tables.values() for row in t["rows"] if row in runs]
    while todo:  # a SPIN run needs its earlier iterations
        run = todo.pop()
        if run not in needed:
            needed.add(run)
            previous = (runs[run].get("spin") or {}).get("previous")
            todo += [previous] if previous else []
    spin = [r for r in needed if runs[r].get("spin")]
    steps, bridges = config.get("step_controlled", {}), config.get("bridges", {})
    used = {runs[r]["data"] for r in needed if r not in spin}
    used_steps, used_bridges = used & set(steps), used & set(bridges)
    used |= {bridges[b]["source"] for b in used_bridges}
    gens = used & set(generations)
    data = {(generations[g]["dataset"], generations[g]["split"]) for g in gens}
    data |= {(steps[s]["dataset"], steps[s]["split"]) for s in used_steps}
    data |= {(d, "train") for d in used - set(generations) - set(steps) - set(bridges)}
    data |= {(runs[r]["data"], "train") for r in spin}
    refcaches = {(runs[r]["ref"] or runs[r]["model"], runs[r]["data"], runs[r]["max_length"], runs[r]["max_prompt_length"],
                  METHODS[runs[r]["method"]].token_ref, METHODS[runs[r]["method"]].kl_pairs)
                 for r in needed if METHODS[runs[r]["method"]].needs_ref and runs[r]["ref_logps"] == "cache"
                 and not (runs[r]["lora"] or {}).get("load_in_4bit")}  # QLoRA: live reference (4-bit base)
    evals, answer_sets = config["evals"], config["answer_sets"]
    evaluated = set(workflow_plan.evaluated(config))  # (instance, eval) per table cell

    def rule(e):  # a judge model needs a GPU (head2head), the answer checker or an API annotator does not
        if e["kind"] in ("lm_eval", "math"):
            return {"lm_eval": "evaluate", "math": "math_eval"}[e["kind"]]
        return "head2head" if e["judge"]["kind"] == "local" else "head2head_cpu"

    eval_jobs = {}
    for _, ev in evaluated:
        eval_jobs[rule(evals[ev])] = eval_jobs.get(rule(evals[ev]), 0) + 1
    # (instance, answer set): the model's own answers and the reference's a judge compares them with
    answers = {(inst, a) for a, insts in workflow_plan.answer_set_needs(config).items() for inst in insts}
    data |= {(answer_sets[a]["dataset"], answer_sets[a]["split"]) for _, a in answers}
    groups = workflow_plan.group_of(config)  # the sets an instance needs with one engine: one job
    synthetic = {ev for _, ev in evaluated if evals[ev]["kind"] == "lm_eval" and evals[ev].get("synthetic")}
    data |= {(evals[ev]["synthetic"]["dataset"], evals[ev]["synthetic"]["split"]) for ev in synthetic}
    jobs = {"data": len(data), "generate": sum(len(generations[g]["seeds"]) for g in gens), "merge": len(gens),
            "spin_generate": sum(len(runs[r]["seeds"]) for r in spin),
            "spin_merge": sum(len(runs[r]["seeds"]) for r in spin), "refcache": len(refcaches),
            "step_controlled_generate": sum(len(steps[s]["seeds"]) for s in used_steps),
            "step_controlled_pairs": len(used_steps), "bridge": len(used_bridges),
            "train": sum(len(runs[r]["seeds"]) for r in needed), "answers": len({(inst, groups[a]) for inst, a in answers}), **eval_jobs,
            "lm_eval_tasks": len(synthetic), "table": len(tables),
            "nltk_data": int(any(needs_punkt(task["task"]) for _, ev in evaluated if evals[ev]["kind"] == "lm_eval"
                                 for task in evals[ev]["tasks"]))}  # IFEval's punkt_tab, fetched once
    return {rule: n for rule, n in jobs.items() if n}


@lru_cache(maxsize=None)
def plan(path: Path, workdir: Path, default_target: bool, commands: bool = False) -> subprocess.CompletedProcess:
    """Dry run of the paper's tables (or of the default target, which adds the manifest); `commands`
    prints each job's shell command (`-p`)."""
    config = load(path)
    targets = [] if default_target else [f"results/tables/{t}.md" for t in config["tables"]]
    return snakemake(workdir, "-n", *(["-p"] if commands else []), *targets, "--configfile", str(path))


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return {p: tmp_path_factory.mktemp(p.stem) for p in EXPERIMENTS}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_dry_run_plans_the_paper_dag(path, workdirs):
    workdir = workdirs[path]
    result = plan(path, workdir, False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert not re.search(r"\berror\b", text, re.I), text[-4000:]
    config = resolved(path)
    jobs = job_stats(text)
    assert jobs == expected_jobs(config), (jobs, expected_jobs(config))

    # one generate job per seed of each generation
    planned = {(m[1], int(m[2])) for m in re.finditer(r"results/generate/(\w+)/seed(\d+)\.jsonl", text)}
    wanted = {(g, s) for g, spec in config["generations"].items() for s in spec["seeds"]
              if any(r["data"] == g for r in config["runs"].values())}
    assert planned == wanted
    # exactly this config's runs are trained: nothing from the default config
    trained = {(m[1], int(m[2])) for m in re.finditer(r"output: results/train/(\w+)/seed(\d+)/model", text)}
    assert trained == {(r, s) for r, spec in config["runs"].items() for s in spec["seeds"]}
    for name in DEFAULT_ONLY:
        assert name not in text, f"the plan mentions '{name}' from the embedded default"
    assert "build_tiny_model" not in jobs and "build_synthetic_dataset" not in jobs
    # planning only: no results, nothing fetched from the hub
    assert not (workdir / "results").exists()
    assert not (workdir / "hf_home").exists() or not any((workdir / "hf_home").rglob("*"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_default_target_plans_tables_and_manifest(path, workdirs):
    result = plan(path, workdirs[path], True)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    jobs = job_stats(text)
    config = resolved(path)
    curves = sum(len(spec["seeds"]) for spec in config["runs"].values())  # rules/report.smk: a plot per run instance
    assert jobs == {**expected_jobs(config), **({"curves": curves, "model_card": curves} if curves else {}),
                    "manifest": 1, "all": 1}  # rules/cards.smk: a card per run instance
