"""Real snakemake runs: config errors before any job, a full run of a mini config, rerun plans."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_runner import ENV, snakemake

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests/configs/mini.yaml"


def failure_report(result, workdir, tail: int = 4000) -> str:
    """Snakemake's output and, for every failed job, the end of its log file (where the cause is)."""
    text = result.stdout + "\n" + result.stderr
    logs = re.findall(r"^\s*log: (\S+) \(check log file\(s\) for error details\)", text, re.M)
    parts = [text[-tail:]]
    for log in dict.fromkeys(logs):
        path = workdir / log
        parts.append(f"--- {log} ---\n" + (path.read_text(errors="replace")[-tail:] if path.is_file() else "(no file)"))
    return "\n".join(parts)


def planned_jobs(result) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(path, config):
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["runs"]["dft"].update(method="dfft"), "runs.dft.method"),
    (lambda c: c["runs"]["sft"].update(model="no_such_model"), "unknown model 'no_such_model'"),
    (lambda c: c["runs"]["sft"].update(learning_rate=0.1), "'learning_rate' was unexpected"),
    (lambda c: c.update(run=c.pop("runs")), "(top level): Additional properties are not allowed ('run' was unexpected)"),
    (lambda c: c["tables"]["mini_table"]["rows"].append("nope"), "unknown run or model 'nope'"),
    (lambda c: c["runs"]["dft"].update(m=2, epochs=2), "needs 4 negatives per example"),
    (lambda c: c["runs"]["dpo_bmc"].pop("delta"), "runs.dpo_bmc: 'delta' is a required property"),
    (lambda c: c["runs"]["simpo_sft"].pop("sft_weight"), "runs.simpo_sft: 'sft_weight' is a required property"),
    (lambda c: c["runs"]["kto"].update(data="toy"), "kto needs 1 negatives per example"),
    (lambda c: c["runs"]["dpo"].update(data="toy_unpaired"), "'toy_unpaired' is unpaired (labelled single completions); only kto"),
    (lambda c: c["bridges"]["toy_bridged"].update(editor="nope"), "bridges.toy_bridged.editor: unknown model (or synthetic_repair) 'nope'"),
    (lambda c: c["step_controlled"]["toy_steps"].update(temperatur=1.0), "Unevaluated properties are not allowed ('temperatur'"),
    (lambda c: c["runs"]["spin"].update(data="toy_neg"), "spin generates its own negatives from a dataset"),
    (lambda c: c["runs"]["spin"].update(ref="mini"), "runs.spin.ref: a spin iteration's reference"),
    (lambda c: c["runs"].update(spin_iter1=dict(c["runs"]["sft"])), "the name is taken by iteration 1"),
    (lambda c: c["runs"]["dpo"].update(lora={"r": 4}), "runs.dpo.lora: 'alpha' is a required property"),
    (lambda c: c["runs"]["dpo_ddp"].update(batch_size=12), "runs.dpo_ddp.batch_size: 12 is not a multiple of"),
    (lambda c: c["runs"]["dpo_ddp"].update(nodes=3), "runs.dpo_ddp.batch_size: 16 is not a multiple of micro_batch_size"),
    (lambda c: c["runs"]["dpo_ddp"].update(dtype="bfloat16", precision="pure", deepspeed="deepspeed_zero3"),
     "runs.dpo_ddp.precision: 'pure' keeps the weights in a half dtype"),
    (lambda c: c["runs"]["dpo"].update(deepspeed="deepspeed_zero1"), "runs.dpo.deepspeed: 'deepspeed_zero1' is not one of"),
    (lambda c: c["runs"]["dpo"].update(attn_implementation="flash"), "runs.dpo.attn_implementation: 'flash' is not one of"),
    (lambda c: c["generations"]["toy_neg"].update(backend="vllm", attn_implementation="sdpa"),
     "generations.toy_neg.attn_implementation: the vllm backend picks its own attention kernel"),
    (lambda c: c["evals"]["toy_eval"].update(attn_implementation="flash"), "evals.toy_eval.attn_implementation: 'flash'"),
    (lambda c: c["evals"]["toy_eval"]["tasks"][0].update(metrik="acc"),
     "evals.toy_eval.tasks.0: Additional properties are not allowed ('metrik' was unexpected)"),
    (lambda c: c["evals"]["toy_eval"].update(kind="lm_evall"), "evals.toy_eval.kind: 'lm_evall' is not one of"),
    (lambda c: c["runs"].update({123: c["runs"]["sft"]}),
     "runs: the key 123 is not a string (int); names are strings (quote it"),
    (lambda c: c["runs"]["sft"].update(lr=float("nan")), "runs.sft.lr: nan is not a finite number"),
    (lambda c: c["answer_sets"]["toy_greedy"].update(split="test"),
     "answer_sets.toy_greedy.split: dataset 'toy' has no split 'test' (its splits: ['eval', 'train'])"),
    (lambda c: c["datasets"]["toy"].update(splits={"eval": 16}),
     "generations.toy_neg.split: dataset 'toy' has no split 'train' (its splits: ['eval'])"),
    (lambda c: c["runs"].update({"../../etc/x": c["runs"]["sft"]}), "runs.../../etc/x: names may only use letters"),
    (lambda c: c["generations"].update({"a/b": c["generations"]["toy_neg"]}), "generations.a/b: names may only use"),
    (lambda c: c["models"]["mini"].update(trust_remote_code="yes"), "models.mini.trust_remote_code: 'yes' is not of type"),
    (lambda c: c["models"]["mini"].update(chat_template="zephir"),
     "models.mini.chat_template: 'zephir' is neither a named template (zephyr) nor a Jinja string"),
    (lambda c: c["models"]["mini"].update(chat_template="{% if %}"),
     "models.mini.chat_template: the Jinja template does not parse"),
    (lambda c: c["evals"]["toy_math"].update(answer_sets=["nope"]), "evals.toy_math.answer_sets: unknown answer set 'nope'"),
    (lambda c: c["evals"]["toy_math"].update(tasks=[]), "Unevaluated properties are not allowed ('tasks'"),
    (lambda c: c["evals"]["toy_alpaca"]["judge"].update(kind="local", model="nope"),
     "evals.toy_alpaca.judge.model: unknown model 'nope'"),
    (lambda c: c["evals"]["toy_alpaca"].update(judge={"kind": "annotator", "annotator": "gpt5_magic"}),
     "evals.toy_alpaca.judge.annotator: unknown alpaca_eval annotator config 'gpt5_magic'"),
    (lambda c: c["tables"]["mini_pairwise"]["rows"].append("mini"),
     "unknown run (a pairwise eval compares a run with its starting model) 'mini'"),
    (lambda c: c["tables"]["mini_alpaca"]["columns"].append(
        {"label": "LC", "task": "alpaca_eval", "metric": "length_controlled_winrate"}),
     "tables.mini_alpaca.columns.1: task 'alpaca_eval' with metric 'length_controlled_winrate' is not among"),
    (lambda c: c["tables"]["mini_table"]["columns"].append({"label": "X", "eval": "nope", "task": "t", "metric": "m"}),
     "tables.mini_table.columns.3.eval: unknown eval 'nope'"),
])
def test_config_error_fails_before_any_job(tmp_path, edit, message):
    config = yaml.safe_load(MINI.read_text())
    edit(config)
    result = snakemake(tmp_path, "-n", "--configfile", write_config(tmp_path / "bad.yaml", config))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Job stats" not in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_a_key_given_twice_fails_with_both_lines(tmp_path):
    text = MINI.read_text().replace("runs:\n", "runs:\n  sft: {method: sft, model: mini, data: toy}\n", 1)
    (tmp_path / "twice.yaml").write_text(text)
    result = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "twice.yaml"))
    first = text.splitlines().index("runs:") + 2  # 1-based line of the inserted sft; the original follows it
    assert result.returncode != 0 and "Job stats" not in result.stdout + result.stderr
    assert (f"twice.yaml:{first + 1}: the key 'sft' is given twice in one mapping (first at line {first})"
            in result.stdout + result.stderr)


def test_default_config_plans_every_stage():
    jobs = planned_jobs(snakemake(ROOT, "-n", "--forceall"))
    for rule in ("build_tiny_model", "build_synthetic_dataset", "data", "generate", "merge", "refcache", "train",
                 "lm_eval_tasks", "evaluate", "answers", "math_eval", "head2head_cpu", "curves", "table", "manifest"):
        assert jobs.get(rule, 0) >= 1, rule
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert jobs["generate"] == len(config["generations"]["arith_neg"]["seeds"])
    assert jobs["train"] == sum(r.get("iterations", 1) for r in config["runs"].values())
    assert jobs["spin_generate"] == sum(r.get("iterations", 0) for r in config["runs"].values())
    evaluated = len({row for t in config["tables"].values() for row in t["rows"]})
    assert jobs["answers"] == jobs["math_eval"] == evaluated == len(config["tables"]["main"]["rows"])
    assert jobs["head2head_cpu"] == 2 * evaluated - 1  # (answer checker) AlpacaEval for every row, pairwise: runs
    assert jobs["table"] == len(config["tables"])


def test_lint_is_clean():
    result = snakemake(ROOT, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_vllm_stages_run_in_the_vllm_environment(tmp_path):
    """backend: vllm -> the generating rules call the interpreter named by VLLM_PYTHON (the conda env
    on the cluster); the hf backend and the CPU stages keep the workflow's own python."""
    config = yaml.safe_load(MINI.read_text())
    config["generations"]["toy_neg"]["backend"] = "vllm"
    config["step_controlled"]["toy_steps"]["backend"] = "vllm"
    path = write_config(tmp_path / "vllm.yaml", config)
    result = snakemake(tmp_path, "-n", "-p", "--configfile", path, timeout=300,
                       env={"VLLM_PYTHON": "/opt/vllm-env/bin/python"})
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert text.count("/opt/vllm-env/bin/python -m workflow_scripts.generate") == 2  # the two seeds of toy_neg
    assert text.count("/opt/vllm-env/bin/python -m workflow_scripts.step_controlled generate") == 2
    assert re.search(r"^Shell command: python -m workflow_scripts.generate .*spin", text, re.M)  # SPIN: hf
    assert re.search(r"^Shell command: python -m workflow_scripts.step_controlled pairs", text, re.M)


def test_configfile_replaces_the_default_instead_of_merging(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(MINI))
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert "results/models/mini" in text and "arith" not in text and "results/models/tiny" not in text


FAKE_TOKENS = {"HF_TOKEN": "hf_FAKEtoken0123456789abcdef", "OPENAI_API_KEY": "sk-FAKEkey0123456789abcdef",
               "WANDB_API_KEY": "FAKEwandb0123456789abcdef"}


def test_credentials_are_never_written(mini_run):
    """Tokens set in the environment reach no log, artifact, manifest or snakemake record."""
    workdir, _ = mini_run
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert len(files) > 100
    for path in files:
        data = path.read_bytes()
        for name, token in FAKE_TOKENS.items():
            assert token.encode() not in data, f"{name} found in {path}"


def test_mini_run_produces_tables_evals_and_manifest(mini_run):
    workdir, _ = mini_run
    res = workdir / "results"
    tex = (res / "tables/mini_table.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{" in tex
    rows = yaml.safe_load(MINI.read_text())["tables"]["mini_table"]["rows"]
    assert len(rows) == 14
    for row in rows:  # every method of the registry trains and gets its row
        assert re.search(rf"^{row} & ", tex.replace(r"\_", "_"), re.M), row
    scores = json.loads((res / "eval/sft/seed42/toy_eval.json").read_text())
    assert set(scores["scores"]) == {"toy_gen", "toy_mc"}
    assert scores["protocol"]["apply_chat_template"] is True and scores["protocol"]["versions"]["lm_eval"]
    manifest = json.loads((res / "manifest.json").read_text())
    assert "train/dft/seed42/model/model.safetensors" in manifest["artifacts"]
    assert manifest["config"]["runs"]["dft"]["gamma"] == 0.85  # resolved defaults recorded
    merged = [json.loads(line) for line in (res / "merge/toy_neg.jsonl").read_text().splitlines()]
    assert len(merged) == 64 and all(len(r["negatives"]) == 2 for r in merged)
    run = json.loads((res / "train/dft/seed42/run.json").read_text())
    assert run["effective_global_batch"] == 16 and run["optimizer_steps"] == 8
    assert run["digests"]["refcache"]
    log = [json.loads(line) for line in (res / "train/dft/seed42/train_log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and all("u" in entry for entry in log)
    spin = json.loads((res / "train/spin/seed42/run.json").read_text())
    assert spin["base_model"]["model"] == spin["reference"]["model"] == "results/train/spin_iter1/seed42/model"
    spin_data = [json.loads(line) for line in (res / "spin/spin/seed42.jsonl").read_text().splitlines()]
    assert len(spin_data) == 64 and all(len(r["negatives"]) == 1 for r in spin_data)
    ddp = json.loads((res / "train/dpo_ddp/seed42/run.json").read_text())
    assert (ddp["world_size"], ddp["distributed_type"], ddp["gradient_accumulation_steps"]) == (2, "MULTI_CPU", 1)
    assert len(list((res / "train/dft/seed42/tracking/mini").glob("events.out.tfevents.*"))) == 1
    assert len(list((res / "train/dft/seed42/tracking/wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert not any("/tracking/" in path for path in manifest["artifacts"])  # the trackers' logs are no artifacts
    kto = json.loads((res / "train/kto/seed42/run.json").read_text())
    assert kto["digests"]["refcache"] and len(list((res / "refcache").glob("mini--toy_unpaired--128-64-kl-*.safetensors"))) == 1


def test_rerun_plans_after_a_complete_run(mini_run, tmp_path):
    workdir, config_path = mini_run
    assert planned_jobs(snakemake(workdir, "-n", "--configfile", config_path)) == {}
    config = yaml.safe_load(Path(config_path).read_text())
    config["runs"]["sft"]["lr"] = 0.002
    changed = write_config(tmp_path / "changed.yaml", config)
    result = snakemake(workdir, "-n", "--configfile", changed)
    # sft's model, its plot, its lm-eval suite, its answers and the evals that read them (math, AlpacaEval,
    # pairwise), its model card, the three tables that show sft, the manifest: nothing of the other runs
    assert planned_jobs(result) == {"train": 1, "curves": 1, "evaluate": 1, "answers": 1, "math_eval": 1,
                                    "head2head_cpu": 2, "model_card": 1, "table": 3, "manifest": 1, "all": 1}
    assert "results/train/sft/seed42" in result.stdout
    # a default that sft does not read (beta) changes nothing for it
    config["runs"]["sft"]["lr"] = 0.001
    config["runs"]["sft"]["beta"] = 0.5
    same = write_config(tmp_path / "same.yaml", config)
    assert "train" not in planned_jobs(snakemake(workdir, "-n", "--configfile", same))
    # tracking is no param: turning it off (or on) reruns no training, only the manifest (it records the config)
    untracked = {**yaml.safe_load(Path(config_path).read_text()), "tracking": {"report_to": []}}
    off = snakemake(workdir, "-n", "--configfile", write_config(tmp_path / "off.yaml", untracked))
    assert planned_jobs(off) == {"manifest": 1, "all": 1}


@pytest.mark.parametrize("module, planned", [
    # every training and what follows it (13 evaluated instances: SPIN's first iteration only feeds the
    # second; its own generation starts from the base model); not the data, generations or caches
    ("losses", {"train": 14, "curves": 14, "evaluate": 13, "answers": 13, "math_eval": 13, "head2head_cpu": 3,
                "spin_generate": 1, "spin_merge": 1, "model_card": 14, "table": 3, "manifest": 1, "all": 1}),
    # the judged evals, and the cards of the trained instances they score
    ("judges", {"head2head_cpu": 4, "model_card": 2, "table": 2, "manifest": 1, "all": 1}),
    ("tables", {"table": 3, "manifest": 1, "all": 1}),
])
def test_editing_a_module_reruns_exactly_the_stages_that_import_it(mini_run, module, planned):
    workdir, config_path = mini_run
    path = ROOT / f"workflow_scripts/{module}.py"
    source, stat = path.read_bytes(), path.stat()
    try:
        path.write_bytes(source + b"# edited\n")
        assert planned_jobs(snakemake(workdir, "-n", "--configfile", config_path)) == planned
    finally:
        path.write_bytes(source)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(snakemake(workdir, "-n", "--configfile", config_path)) == {}


def test_a_deleted_reference_cache_record_is_rebuilt(mini_run, tmp_path):
    """Training reads a cache's .json too: when training reruns, a deleted one is rebuilt first (Snakemake
    leaves a missing intermediate alone while nothing downstream of it has to run)."""
    workdir, config_path = mini_run
    meta = sorted((workdir / "results/refcache").glob("*.json"))[0]
    meta.rename(tmp_path / meta.name)
    try:
        plan = planned_jobs(snakemake(workdir, "-n", "--configfile", config_path, "--forcerun", "train"))
        assert plan.get("refcache") == 1 and plan.get("train", 0) >= 1
    finally:
        (tmp_path / meta.name).rename(meta)  # keeps its mtime


def test_verify_names_an_artifact_changed_after_the_run(mini_run):
    workdir, _ = mini_run

    def run():
        return subprocess.run([sys.executable, "-m", "workflow_scripts.verify", "--results", "results",
                               "--manifest", "results/manifest.json"], cwd=workdir, capture_output=True, text=True,
                              env={**ENV, "PYTHONPATH": str(ROOT)})

    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    weights = workdir / "results/train/sft/seed42/model/model.safetensors"
    blob, stat = weights.read_bytes(), weights.stat()
    try:
        weights.write_bytes(blob[:-4] + bytes([blob[-4] ^ 1]) + blob[-3:])
        result = run()
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "results/train/sft/seed42/model: not the content recorded in model.sha256",
            "results/train/sft/seed42/model/model.safetensors: changed since manifest.json", "2 problems"]
    finally:
        weights.write_bytes(blob)
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_bad_input_leaves_no_output(mini_run, tmp_path):
    workdir, config_path = mini_run
    seed_file = workdir / "results/generate/toy_neg/seed1.jsonl"
    backup, record = seed_file.read_text(), Path(f"{seed_file}.sha256").read_text()
    try:
        seed_file.write_text(backup.splitlines()[0] + "\n")  # cut after its first record
        result = snakemake(workdir, "--cores", "1", "--configfile", config_path, "--forcerun", "merge",
                           "--until", "merge")
        assert result.returncode != 0
        log = (workdir / "results/logs/merge/toy_neg.log").read_text()
        assert "seed1.jsonl: the content (sha256" in log and "it was changed or cut afterwards" in log
        Path(f"{seed_file}.sha256").unlink()  # a file nothing recorded (a user's own) is validated instead
        result = snakemake(workdir, "--cores", "1", "--configfile", config_path, "--forcerun", "merge",
                           "--until", "merge")
        assert result.returncode != 0
        log = (workdir / "results/logs/merge/toy_neg.log").read_text()
        assert "seed1.jsonl, field 'id': ends after 1 records; the data goes on from id" in log
        assert not (workdir / "results/merge/toy_neg.jsonl").exists()
    finally:
        seed_file.write_text(backup)
        Path(f"{seed_file}.sha256").write_text(record)
        shutil.rmtree(workdir / ".snakemake" / "incomplete", ignore_errors=True)


def test_a_second_run_from_scratch_reproduces_every_digest(mini_run, tmp_path):
    """Same config and seeds, another workdir (the mini run's runs, fewer of them): every artifact the two
    runs share (models, generations, caches, trained weights, answers, eval JSON) has the same sha256."""
    config = yaml.safe_load(MINI.read_text())
    keep = {"dft", "dpo", "spin"}  # sampled negatives, reference caches, a per-example state, a generation chain
    config["runs"] = {k: v for k, v in config["runs"].items() if k in keep}
    for table in config["tables"].values():
        table["rows"] = [row for row in table["rows"] if row in keep or row in config["models"]]
    path = write_config(tmp_path / "config.yaml", config)
    result = snakemake(tmp_path, "--cores", "2", "--configfile", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    first = json.loads((mini_run[0] / "results/manifest.json").read_text())["artifacts"]
    second = json.loads((tmp_path / "results/manifest.json").read_text())["artifacts"]
    shared = {k for k in first.keys() & second.keys() if not k.startswith("tables/")}  # tables: other rows
    assert len(shared) > 40 and "train/spin/seed42/model/model.safetensors" in shared
    assert set(second) - set(first) <= {k for k in second if k.startswith("tables/")}
    differing = sorted(k for k in shared if first[k] != second[k])
    assert not differing, differing
