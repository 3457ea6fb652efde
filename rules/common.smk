# Helpers and target lists shared by the rules (no rules here).
import hashlib
import json
import os
import re
import shlex
import signal
import sys

sys.path.insert(0, workflow.basedir)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))

from snakemake.exceptions import WorkflowError
from workflow_scripts import plan
from workflow_scripts.config import (
    METHODS, ConfigError, check_config, check_yaml_file, negatives_required, refcache_settings,
    run_hyperparameters, runs_model_here,
)
from workflow_scripts.imports import import_closure
from workflow_scripts.io import atomic_path
from workflow_scripts.nltk_data import RESOURCE, needs_punkt

try:
    for path in workflow.configfiles:
        check_yaml_file(path)
    check_config(config, os.path.join(workflow.basedir, "schemas/config.schema.yaml"))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# SLURM signals every process of a job step (the profile's --signal=USR1@600 before the time limit): the
# snakemake running the job, the job's shell and accelerate's launcher ignore USR1 (an ignored signal stays
# ignored in every child), so that they outlive the trainer processes, which handle it (checkpoint, exit 143).
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

R = "results"
ANSWER_GROUPS = plan.answer_groups(config)  # group name -> the answer sets one job generates together
GROUP_OF = plan.group_of(config)  # answer set -> its group
# Credentials (hub downloads of gated models, API judges, wandb) come only from the environment: the
# ones that are set are declared with `envvars` (passed to cluster jobs), never put in params or files.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY")


wildcard_constraints:
    model=r"[A-Za-z0-9_]+",
    dataset=r"[A-Za-z0-9_]+",
    split=r"[A-Za-z0-9_]+",
    generation=r"[A-Za-z0-9_]+",
    pairs=r"[A-Za-z0-9_]+",
    run=r"[A-Za-z0-9_]+",
    seed=r"\d+",
    eval=r"[A-Za-z0-9_]+",
    table=r"[A-Za-z0-9_]+",
    subject=r"[A-Za-z0-9_]+/(seed\d+|base)",
    answer_group="|".join(map(re.escape, ANSWER_GROUPS)) or "(?!)",


def js(obj):
    """Compact, key-sorted JSON for params (a change reruns the rule, nothing else does)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def json_file(obj):
    """A JSON argument that grows with the config (the resolved config, a table's eval files), passed as the
    path of a file named by its digest: Linux caps one command-line argument at 128 KiB (MAX_ARG_STRLEN),
    and a job's whole shell command is one argument of bash. The process planning the job writes it
    (atomically) under .snakemake/, so a changed content is a changed param, which reruns the rule."""
    text = js(obj)
    path = os.path.join(".snakemake", "json_arguments", hashlib.sha256(text.encode()).hexdigest() + ".json")
    if not os.path.isfile(path):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path


def code(stage):
    """A stage module and every project module it imports, listed as inputs: editing any of them reruns
    the stage (and what depends on it), and nothing else."""
    return [str(path) for path in import_closure(stage)]


def model_location(name):
    """(path or hub id, revision, input files) of a configured model."""
    m = config["models"][name]
    if m.get("build") == "tiny" or "gguf" in m:
        return f"{R}/models/{name}", None, [f"{R}/models/{name}"]
    if "hf_id" in m:
        return m["hf_id"], m["revision"], []
    return m["path"], None, [m["path"]]


def model_names(kind):
    """A wildcard pattern matching exactly the models the workflow makes one way (`build` or `gguf`)."""
    names = [n for n, m in config["models"].items() if (m.get("build") == "tiny" if kind == "build" else kind in m)]
    return "|".join(names) or "(?!)"


def gguf_input(w):
    """The local .gguf file a conversion reads (none when it comes from an installed package)."""
    spec = config["models"][w.model]["gguf"]
    return [] if spec["package"] else [spec["file"]]


def model_flags(name, *also_loaded):
    """The flags a job loading the configured model `name` (and `also_loaded`, a run's reference) passes its stage:
    `--trust-remote-code` when one of their config entries turns it on, never by default; `--chat-template`
    with the template `name`'s entry sets (resolved to Jinja text), the one its prompts are rendered with."""
    trust = any(config["models"][n]["trust_remote_code"] for n in (name, *also_loaded) if n)
    template = config["models"][name].get("chat_template")
    return " ".join(filter(None, ["--trust-remote-code" if trust else "",
                                  template and f"--chat-template {shlex.quote(template)}"]))


def revision_arg(revision):
    return f"--revision {revision}" if revision else ""


def data_file(name):
    """Training data named in the config: a dataset's train split, a generation's merged negatives,
    step-controlled pairs, bridged pairs or unpaired (labelled) data."""
    if name in config["generations"]:
        return f"{R}/merge/{name}.jsonl"
    if name in config["step_controlled"]:
        return f"{R}/step_controlled/{name}.jsonl"
    if name in config["bridges"]:
        return f"{R}/bridge/{name}.jsonl"
    if name in config["unpaired"]:
        return f"{R}/unpaired/{name}.jsonl"
    return split_file(name, "train")


def split_file(dataset, split):
    """A normalised split of a dataset (the data stage's output)."""
    return f"{R}/data/{dataset}/{split}.jsonl"


def generate_python(settings):
    """The interpreter of a generating job: on the cluster the rule's conda env provides vllm; on a
    machine without conda, VLLM_PYTHON names an environment that has it (see the README)."""
    return os.environ.get("VLLM_PYTHON", "python") if settings["backend"] == "vllm" else "python"


def engine_env(settings, default):
    """The conda env of a job that may run vLLM: the generate env (vllm, lm-eval, alpaca-eval) for the
    vllm backend, else the rule's own."""
    return "../envs/generate.yaml" if settings["backend"] == "vllm" else default


def engine_params(settings, drop=()):
    """A generating stage's settings as JSON params, without the keys that do not change its output."""
    return js({k: v for k, v in settings.items() if k not in ("threads", *drop)})


def run_data(run, seed):
    """Training data of one (run, seed): SPIN iterations train on their own generations."""
    if config["runs"][run].get("spin"):
        return f"{R}/spin/{run}/seed{seed}.jsonl"
    return data_file(config["runs"][run]["data"])


def run_model(run, seed):
    """(path or hub id, revision, inputs) of the model a run starts from: SPIN iteration k > 1
    starts from iteration k-1 of the same training seed."""
    previous = (config["runs"][run].get("spin") or {}).get("previous")
    if previous:
        path = f"{R}/train/{previous}/seed{seed}/model"
        return path, None, [path]
    return model_location(config["runs"][run]["model"])


def run_ref(run, seed):
    """(path or hub id, revision, inputs) of the run's reference model (SPIN: the starting model)."""
    r = config["runs"][run]
    if r.get("spin"):
        return run_model(run, seed)
    return model_location(r["ref"] or r["model"])


def refcache_name(run):
    """Readable (reference, data, lengths, kind) plus a digest of every encoding setting and the dtype,
    so runs share a cache exactly when it is valid for all of them."""
    r, spec = config["runs"][run], METHODS[config["runs"][run]["method"]]
    flags = ("-tok" if spec.token_ref else "") + ("-kl" if spec.kl_pairs else "")
    digest = hashlib.sha256(js({**refcache_settings(r), "dtype": r["dtype"]}).encode()).hexdigest()[:8]
    return f"{r['ref'] or r['model']}--{r['data']}--{r['max_length']}-{r['max_prompt_length']}{flags}-{digest}"


def uses_refcache(run):
    """A QLoRA run's reference is its own 4-bit base with adapters disabled: computed live."""
    r = config["runs"][run]
    qlora = bool((r["lora"] or {}).get("load_in_4bit"))
    return METHODS[r["method"]].needs_ref and r["ref_logps"] == "cache" and not qlora


REFCACHES = {}  # cache name -> the runs that read it
for _run in config["runs"]:
    if uses_refcache(_run):
        REFCACHES.setdefault(refcache_name(_run), []).append(_run)


def refcache_params(cache):
    """Settings of a cache (shared by its runs) and the negatives it must hold: the most any of them reads."""
    runs = REFCACHES[cache]
    negatives = max(negatives_required(config["runs"][r]["method"], config["runs"][r]) for r in runs)
    first = config["runs"][runs[0]]
    return js({**refcache_settings(first), "dtype": first["dtype"], "attn_implementation": first["attn_implementation"],
               "negatives": negatives, "batch_size": config["refcache"]["batch_size"],
               "shard_size": config["refcache"]["shard_size"]})


def subjects(row):
    return plan.subjects(config, row)


def subject_model_name(subject):
    return plan.subject_model_name(config, subject)


def subject_model(subject):
    """(path or hub id, revision, input files) of an evaluated instance."""
    name, instance = subject.split("/")
    if instance == "base":
        return model_location(name)
    return f"{R}/train/{subject}/model", None, [f"{R}/train/{subject}/model"]


def eval_files(table):
    """Row -> eval -> the eval JSON of each of its instances (training seeds)."""
    t = config["tables"][table]
    evals = dict.fromkeys(col["eval"] or t["eval"] for col in t["columns"])
    return {row: {ev: [f"{R}/eval/{s}/{ev}.json" for s in subjects(row)] for ev in evals} for row in t["rows"]}


def plot_outputs():
    """The training-curve plot of every trained instance (rules/report.smk)."""
    return [f"{R}/plots/{s}.png" for run in config["runs"] for s in subjects(run)]


def instance_evals(subject):
    """The evals the tables ask of an evaluated instance."""
    return [e for s, e in plan.evaluated(config) if s == subject]


def card_outputs():
    """The model card of every trained instance (rules/cards.smk)."""
    return [f"{R}/train/{s}/model_card.md" for run in config["runs"] for s in subjects(run)]


def push_repo(w):
    """The hub repo a trained instance is pushed to (config `push.repo`, with {run} and {seed})."""
    if not config["push"]["repo"]:
        raise WorkflowError("config push.repo is not set: name the hub repo of a pushed model, e.g. "
                            "'my-org/{run}-seed{seed}'")
    return config["push"]["repo"].format(run=w.run, seed=w.seed)


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
    return engine_params(config["generations"][w.generation], ("seeds", "model", "dataset"))


def bridge_editor(w):
    """(path or hub id, revision, inputs) of a bridge's editor model; nothing for synthetic_repair."""
    editor = config["bridges"][w.pairs]["editor"]
    return model_location(editor) if editor in config["models"] else (None, None, [])


def train_inputs(w):
    inputs = {"script": code("train"), "data": run_data(w.run, w.seed), "model": run_model(w.run, w.seed)[2]}
    if config["runs"][w.run]["deepspeed"]:  # its ZeRO stage, offload and precision settings shape the training
        inputs["deepspeed"] = os.path.join(workflow.basedir, "accelerate", f"{config['runs'][w.run]['deepspeed']}.yaml")
    if METHODS[config["runs"][w.run]["method"]].needs_ref:
        inputs["ref_model"] = run_ref(w.run, w.seed)[2]
        if uses_refcache(w.run):  # the tensors and the record of their ids and digests, which training reads too
            inputs["refcache"] = f"{R}/refcache/{refcache_name(w.run)}.safetensors"
            inputs["refcache_meta"] = f"{R}/refcache/{refcache_name(w.run)}.json"
    return inputs


def reference_args(w, input):
    if not METHODS[config["runs"][w.run]["method"]].needs_ref:
        return ""
    path, revision, _ = run_ref(w.run, w.seed)
    args = f"--ref-model {path}" + (f" --ref-revision {revision}" if revision else "")
    if uses_refcache(w.run):
        args += f" --refcache {input.refcache}"
    return args


def train_launch_args(w):
    """Process count and DeepSpeed config name of a run, for workflow_scripts.launch."""
    r = config["runs"][w.run]
    return f"--processes {r['processes']}" + (f" --deepspeed {r['deepspeed']}" if r["deepspeed"] else "")


def spin_generation_params(w):
    """Sampling settings of a SPIN iteration's own responses (one per prompt, seed = training seed)."""
    return engine_params(config["runs"][w.run]["generation"])


def eval_inputs(w):
    inputs = {"script": code("evaluate"), "model": subject_model(w.subject)[2]}
    if config["evals"][w.eval].get("synthetic"):
        inputs["tasks"] = f"{R}/eval_tasks/{w.eval}"
    inputs["task_data"] = sorted({f for t in config["evals"][w.eval]["tasks"] for f in (t["data_files"] or {}).values()})
    if any(needs_punkt(t["task"]) for t in config["evals"][w.eval]["tasks"]):
        inputs["nltk"] = punkt_tab_dir()
    return inputs


def punkt_tab_dir():
    """Where rule nltk_data puts NLTK's punkt_tab (IFEval's checkers read it)."""
    return os.path.join(config["nltk_data"], RESOURCE)


def evals_of_kind(*kinds):
    """A wildcard pattern matching the names of the evals of these kinds (a rule per kind)."""
    names = [name for name, e in config["evals"].items() if e["kind"] in kinds]
    return "|".join(names) if names else "(?!)"


def judged_evals(model_judge):
    """A wildcard pattern matching the judged evals (alpaca_eval, pairwise) whose judge is a model run here
    (`local`), or the others (answer_check, an API annotator): the first need a GPU, the others a CPU."""
    names = [name for name, e in config["evals"].items()
             if e["kind"] in ("alpaca_eval", "pairwise") and runs_model_here(e["judge"]) == model_judge]
    return "|".join(names) if names else "(?!)"


def answers_dir(subject, group):
    """The folder of an answer group's sets, answered by an evaluated instance (rule answers)."""
    return f"{R}/answers/{subject}/{group}"


def answers_file(subject, answer_set):
    return f"{answers_dir(subject, GROUP_OF[answer_set])}/{answer_set}.jsonl"


def answer_group_sets(group):
    """The answer sets of a group as its job reads them: name, split, seed and the settings that change
    the answers."""
    drop = ("threads", "dataset", "split", "seed")
    return [{"name": a, "data": answer_set_split(a), "seed": config["answer_sets"][a]["seed"],
             "params": {k: v for k, v in config["answer_sets"][a].items() if k not in drop}}
            for a in ANSWER_GROUPS[group]]


def answer_set_split(answer_set):
    a = config["answer_sets"][answer_set]
    return split_file(a["dataset"], a["split"])


def head2head_reference(w):
    """(name, answer file or None) of the reference an evaluated instance is judged against: for pairwise
    its starting model; for alpaca_eval the configured model / run (its first seed) or the split's `chosen`."""
    answer_set = config["evals"][w.eval]["answer_set"]
    subject = plan.head2head_reference(config, w.subject, w.eval)
    if subject is None:
        return f"{answer_set} references (the split's chosen responses)", None
    return subject, answers_file(subject, answer_set)


def head2head_inputs(w):
    e = config["evals"][w.eval]
    inputs = {"script": code("head2head"), "data": answer_set_split(e["answer_set"]),
              "answers": answers_dir(w.subject, GROUP_OF[e["answer_set"]])}
    reference = head2head_reference(w)[1]
    if reference:
        inputs["reference"] = os.path.dirname(reference)
    if runs_model_here(e["judge"]):
        inputs["judge"] = model_location(e["judge"]["model"])[2]
    if e["judge"]["kind"] == "fastchat":
        inputs["judge_prompts"] = os.path.join(workflow.basedir, "workflow_scripts/fastchat_judge_prompts.jsonl")
    return inputs


def local_judge(eval_name):
    """The engine settings of an eval's judge model (backend hf when the judge runs no model here)."""
    judge = config["evals"][eval_name]["judge"]
    return judge if runs_model_here(judge) else {"backend": "hf"}


def judge_args(w):
    judge = config["evals"][w.eval]["judge"]
    if not runs_model_here(judge):
        return ""
    location, revision, _ = model_location(judge["model"])
    return " ".join(filter(None, [f"--judge-model {location}", revision and f"--judge-revision {revision}",
                                  model_flags(judge["model"])]))
