# Helpers and target lists shared by the rules (no rules here).
import json
import os
import sys

sys.path.insert(0, workflow.basedir)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))

from snakemake.exceptions import WorkflowError
from workflow_scripts.config import ConfigError, NEEDS_REF, check_config, run_hyperparameters

try:
    check_config(config, os.path.join(workflow.basedir, "schemas/config.schema.yaml"))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

R = "results"


wildcard_constraints:
    model=r"[A-Za-z0-9_]+",
    dataset=r"[A-Za-z0-9_]+",
    split=r"[A-Za-z0-9_]+",
    generation=r"[A-Za-z0-9_]+",
    run=r"[A-Za-z0-9_]+",
    seed=r"\d+",
    eval=r"[A-Za-z0-9_]+",
    table=r"[A-Za-z0-9_]+",
    subject=r"[A-Za-z0-9_]+/(seed\d+|base)",


def js(obj):
    """Compact, key-sorted JSON for params (a change reruns the rule, nothing else does)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def script(name):
    """A stage module, listed as input so that editing it reruns the stage."""
    return os.path.join(workflow.basedir, "workflow_scripts", f"{name}.py")


def model_location(name):
    """(path or hub id, revision, input files) of a configured model."""
    m = config["models"][name]
    if m.get("build") == "tiny":
        return f"{R}/models/{name}", None, [f"{R}/models/{name}"]
    if "hf_id" in m:
        return m["hf_id"], m["revision"], []
    return m["path"], None, [m["path"]]


def revision_arg(revision):
    return f"--revision {revision}" if revision else ""


def data_file(name):
    """Training data of a run: a dataset's train split or a generation's merged negatives."""
    if name in config["generations"]:
        return f"{R}/merge/{name}.jsonl"
    return f"{R}/data/{name}/train.jsonl"


def run_ref(run):
    r = config["runs"][run]
    return r["ref"] or r["model"]


def refcache_name(run):
    r = config["runs"][run]
    return f"{run_ref(run)}--{r['data']}--{r['max_length']}-{r['max_prompt_length']}"


def refcache_settings(run):
    r = config["runs"][run]
    return {k: r[k] for k in ("max_length", "max_prompt_length", "prompt_format", "dtype")}


def uses_refcache(run):
    r = config["runs"][run]
    return NEEDS_REF[r["method"]] and r["ref_logps"] == "cache"


REFCACHES = {refcache_name(run): run for run in config["runs"] if uses_refcache(run)}


def subjects(row):
    """Evaluated instances of a table row: each training seed of a run, or a base model."""
    if row in config["runs"]:
        return [f"{row}/seed{s}" for s in config["runs"][row]["seeds"]]
    return [f"{row}/base"]


def subject_model(subject):
    """(path or hub id, revision, input files) of an evaluated instance."""
    name, instance = subject.split("/")
    if instance == "base":
        return model_location(name)
    return f"{R}/train/{subject}/model", None, [f"{R}/train/{subject}/model"]


def eval_files(table):
    t = config["tables"][table]
    return {row: [f"{R}/eval/{s}/{t['eval']}.json" for s in subjects(row)] for row in t["rows"]}


def table_outputs():
    return [f"{R}/tables/{t}.{ext}" for t in config["tables"] for ext in ("tex", "csv", "md")]


def data_source(w):
    d = config["datasets"][w.dataset]
    if d.get("build") == "synthetic":
        return f"{R}/raw/{w.dataset}"
    if d.get("path"):
        return d["path"][w.split]
    return []


def data_source_arg(w, input):
    d = config["datasets"][w.dataset]
    if d.get("build") == "synthetic":
        return f"--source {input.source}/{w.split}.jsonl"
    if d.get("path"):
        return f"--source {input.source}"
    return ""


def generation_params(w):
    g = config["generations"][w.generation]
    return js({k: v for k, v in g.items() if k not in ("seeds", "model", "dataset", "threads")})


def train_inputs(w):
    run = config["runs"][w.run]
    inputs = {"script": script("train"), "data": data_file(run["data"]), "model": model_location(run["model"])[2]}
    if NEEDS_REF[run["method"]]:
        inputs["ref_model"] = model_location(run_ref(w.run))[2]
        if uses_refcache(w.run):
            inputs["refcache"] = f"{R}/refcache/{refcache_name(w.run)}.safetensors"
    return inputs


def reference_args(w, input):
    run = config["runs"][w.run]
    if not NEEDS_REF[run["method"]]:
        return ""
    path, revision, _ = model_location(run_ref(w.run))
    args = f"--ref-model {path}" + (f" --ref-revision {revision}" if revision else "")
    if uses_refcache(w.run):
        args += f" --refcache {input.refcache}"
    return args


def eval_inputs(w):
    inputs = {"script": script("evaluate"), "model": subject_model(w.subject)[2]}
    if config["evals"][w.eval].get("synthetic"):
        inputs["tasks"] = f"{R}/eval_tasks/{w.eval}"
    return inputs
