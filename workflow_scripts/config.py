"""Config checks at start-up: the JSON schema (with defaults) and the cross-references.

Kept free of torch so that planning stays fast. Every error names the key path.
"""
from __future__ import annotations

import math
import os
import re
from functools import cache

import jsonschema
import yaml

from . import chat_templates
from .eval_kinds import HEAD2HEAD_METRICS, annotator_configs, eval_metrics, runs_model_here
from .methods import COMMON_KEYS, METHODS, negatives_required

NAME = re.compile(r"^[A-Za-z0-9_]+$")


class ConfigError(Exception):
    pass


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(prop, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_schema(config: dict, schema_path: str) -> None:
    """Validate in place, filling defaults; the first error names its key path.

    An "unevaluated properties" error comes last: it is usually the echo of a failed `then` branch,
    whose own error names the actual mistake.
    """
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config),
                    key=lambda e: (e.validator == "unevaluatedProperties", list(e.absolute_path)))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"config error at {where}: {e.message}")


SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "config.schema.yaml")


@cache
def _schema() -> dict:
    with open(SCHEMA) as f:
        return yaml.safe_load(f)


def run_settings(params: dict) -> dict:
    """A training job's settings: the keys its method reads (methods.run_hyperparameters) and the seed, each
    checked against the type the schema gives runs, the absent ones filled with the schema's default, so that a
    default lives in the schema only. A key the method does not read, or one without a default, is refused."""
    if params.get("method") not in METHODS:
        raise ConfigError(f"run settings: method {params.get('method')!r} is not one of {sorted(METHODS)}")
    schema, keys = _schema(), [*COMMON_KEYS, *METHODS[params["method"]].keys]
    run = schema["properties"]["runs"]["additionalProperties"]["properties"]
    unknown = set(params) - set(keys) - {"seed"}
    if unknown:
        raise ConfigError(f"run settings: {sorted(unknown)} not read by method {params['method']!r}")
    settings = dict(params)
    typed = {"$defs": schema["$defs"], "type": "object", "required": ["seed"],
             "properties": {"seed": {"type": "integer"}, **{k: run[k] for k in keys if k in run}}}
    for e in _with_defaults(jsonschema.Draft202012Validator)(typed).iter_errors(settings):
        raise ConfigError(f"run settings at {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}")
    missing = [k for k in keys if k not in settings and k in run]
    if missing:
        raise ConfigError(f"run settings: {missing} missing (the schema has no default)")
    return settings


DATA_SECTIONS = ("datasets", "generations", "step_controlled", "bridges", "unpaired")  # what a run's `data` names
PAIRS_SECTIONS = ("step_controlled", "bridges")  # each record holds at least one negative


def is_unpaired(config: dict, data: str) -> bool:
    """Labelled single completions (KTO's unpaired data): an `unpaired` entry or a dataset that maps `label`."""
    return data in config["unpaired"] or bool(config["datasets"].get(data, {}).get("mapping", {}).get("label"))


def check_references(config: dict) -> None:
    """Every name the config uses is defined, in the section it must come from; the key path of the first that
    is not is named."""
    _check_names(config)

    def need(where, value, known, what):
        if value not in known:
            raise ConfigError(f"config error at {where}: unknown {what} '{value}' (known: {sorted(known)})")

    _check_data_sections(config, need)
    for name, r in config["runs"].items():
        _check_run(name, r, config, need)
    for name, a in config["answer_sets"].items():
        need(f"answer_sets.{name}.dataset", a["dataset"], config["datasets"], "dataset")
    for name, e in config["evals"].items():
        _check_eval(name, e, config, need)
    for name, t in config["tables"].items():
        _check_table(name, t, config, need)


def _check_names(config: dict) -> None:
    """Names are identifiers, and no name is defined twice across the sections that share a namespace."""
    for section in ("models", *DATA_SECTIONS, "answer_sets", "runs", "evals", "tables"):
        for name in config[section]:
            if not NAME.match(name):
                raise ConfigError(f"config error at {section}.{name}: names may only use letters, digits and '_'")
    clash = set(config["models"]) & set(config["runs"])
    if clash:
        raise ConfigError(f"config error: {sorted(clash)} name both a model and a run")
    for i, a in enumerate(DATA_SECTIONS):
        for b in DATA_SECTIONS[i + 1:]:
            clash = set(config[a]) & set(config[b])
            if clash:
                raise ConfigError(f"config error: {sorted(clash)} name entries of both {a} and {b}")


def _check_data_sections(config: dict, need) -> None:
    """Datasets' hub splits, and the models and sources of generations, pairs and unpaired data."""
    datasets, generations = config["datasets"], config["generations"]
    for name, d in datasets.items():
        for split, spec in d["splits"].items() if d.get("hub_files") else ():
            source = str(spec).split("[")[0]
            if source not in d["hub_files"]:
                raise ConfigError(f"config error at datasets.{name}.splits.{split}: source split '{source}' has no "
                                  f"file in hub_files {sorted(d['hub_files'])}")
    for section in ("generations", "step_controlled"):
        for name, g in config[section].items():
            need(f"{section}.{name}.model", g["model"], config["models"], "model")
            need(f"{section}.{name}.dataset", g["dataset"], config["datasets"], "dataset")
    for name, u in config["unpaired"].items():
        need(f"unpaired.{name}.source", u["source"], config["generations"], "generation")
    for name, b in config["bridges"].items():
        sources = {**generations, **{d: v for d, v in datasets.items() if v["mapping"].get("rejected")}}
        need(f"bridges.{name}.source", b["source"], sources, "generation or dataset that maps `rejected`")
        if b["editor"] != "synthetic_repair":
            need(f"bridges.{name}.editor", b["editor"], config["models"], "model (or synthetic_repair)")
            if not b["template"]:
                raise ConfigError(f"config error at bridges.{name}.template: an editor model needs a prompt template "
                                  "with {prompt}, {winning} and {losing}")


def _check_run(name: str, r: dict, config: dict, need) -> None:
    data_names = {n: section for section in DATA_SECTIONS for n in config[section]}
    need(f"runs.{name}.method", r["method"], METHODS, "method")
    need(f"runs.{name}.model", r["model"], config["models"], "model")
    need(f"runs.{name}.data", r["data"], data_names, "dataset, generation, step_controlled or bridges entry")
    if r.get("ref") is not None:
        need(f"runs.{name}.ref", r["ref"], config["models"], "model")
    if r["max_prompt_length"] >= r["max_length"]:
        raise ConfigError(f"config error at runs.{name}: max_prompt_length must be below max_length")
    _check_training_shape(name, r)
    if is_unpaired(config, r["data"]):
        if r["method"] != "kto":
            raise ConfigError(f"config error at runs.{name}.data: '{r['data']}' is unpaired (labelled single "
                              f"completions); only kto trains on it")
        r["unpaired"] = True
    _check_negatives(name, r, config)


def _check_table(name: str, t: dict, config: dict, need) -> None:
    evals, runs = config["evals"], config["runs"]
    need(f"tables.{name}.eval", t["eval"], config["evals"], "eval")
    for i, col in enumerate(t["columns"]):
        ev = col["eval"] or t["eval"]
        need(f"tables.{name}.columns.{i}.eval", ev, config["evals"], "eval")
        tasks = eval_metrics(evals[ev])
        if col["metric"] not in tasks.get(col["task"], ()):
            raise ConfigError(f"config error at tables.{name}.columns.{i}: task '{col['task']}' with metric "
                              f"'{col['metric']}' is not among eval '{ev}' tasks "
                              f"{ {k: sorted(v) for k, v in tasks.items()} }")
    pairwise = any(evals[col["eval"] or t["eval"]]["kind"] == "pairwise" for col in t["columns"])
    for row in t["rows"]:
        need(f"tables.{name}.rows", row, runs if pairwise else {**config["models"], **runs},
             "run (a pairwise eval compares a run with its starting model)" if pairwise else "run or model")


def _check_eval(name: str, e: dict, config: dict, need) -> None:
    answer_sets, models, runs = config["answer_sets"], config["models"], config["runs"]
    if e["kind"] == "lm_eval" and e.get("synthetic"):
        need(f"evals.{name}.synthetic.dataset", e["synthetic"]["dataset"], config["datasets"], "dataset")
    if e["kind"] == "math":
        for a in e["answer_sets"]:
            need(f"evals.{name}.answer_sets", a, answer_sets, "answer set")
    if e["kind"] in HEAD2HEAD_METRICS:
        need(f"evals.{name}.answer_set", e["answer_set"], answer_sets, "answer set")
        if answer_sets[e["answer_set"]]["samples"] != 1:
            raise ConfigError(f"config error at evals.{name}.answer_set: a judged eval compares one response per "
                              f"prompt; answer set '{e['answer_set']}' has {answer_sets[e['answer_set']]['samples']}")
        if e["kind"] == "alpaca_eval" and e["reference"] != "dataset":
            need(f"evals.{name}.reference", e["reference"], {**models, **runs}, "model or run (or `dataset`)")
        _check_judge(name, e, models, need)
        if e["kind"] == "pairwise" and e["difficulty_file"]:
            raise ConfigError(f"config error at evals.{name}.difficulty_file: the length-controlled win rate is "
                              "an alpaca_eval metric")


def _check_judge(name: str, e: dict, models: dict, need) -> None:
    judge = e["judge"]
    if runs_model_here(judge):
        need(f"evals.{name}.judge.model", judge.get("model"), models, "model")
    if judge["kind"] in ("local", "annotator") and (known := annotator_configs()) is not None:
        need(f"evals.{name}.judge.annotator", judge["annotator"], known, "alpaca_eval annotator config")
    if judge["kind"] == "fastchat" and e["kind"] != "pairwise":
        raise ConfigError(f"config error at evals.{name}.judge.kind: FastChat's protocol compares a model with its "
                          f"starting model (kind pairwise), not {e['kind']}")
    if judge["kind"] == "fastchat" and not judge.get("model"):
        raise ConfigError(f"config error at evals.{name}.judge.model: the fastchat judge needs a model (a configured "
                          "one with via local, the served model's name with via api)")


def _check_training_shape(name: str, r: dict) -> None:
    """Precision and batch settings a run's processes can honour."""
    if r["precision"] == "pure" and (r["deepspeed"] or r["dtype"] == "float32"):
        raise ConfigError(f"config error at runs.{name}.precision: 'pure' keeps the weights in a half dtype "
                          f"without float32 masters; it needs dtype bfloat16 or float16 and no DeepSpeed "
                          f"(DeepSpeed's bf16 / fp16 modes always keep float32 masters)")
    if r["batch_size"] % (r["micro_batch_size"] * r["processes"] * r["nodes"]):
        raise ConfigError(f"config error at runs.{name}.batch_size: {r['batch_size']} is not a multiple of "
                          f"micro_batch_size {r['micro_batch_size']} x processes {r['processes']} x nodes {r['nodes']}")


def _check_negatives(name: str, r: dict, config: dict) -> None:
    """The run's data must hold the negatives its method reads over all its epochs."""
    method, datasets, generations = r["method"], config["datasets"], config["generations"]
    if method == "spin":
        if r["ref"] is not None:
            raise ConfigError(f"config error at runs.{name}.ref: a spin iteration's reference is the previous "
                              f"iteration's model; leave `ref` unset")
        if r["data"] not in datasets:
            raise ConfigError(f"config error at runs.{name}.data: spin generates its own negatives from a dataset "
                              f"(prompts and ground truth), not the generation '{r['data']}'")
        return
    need = negatives_required(method, r)
    if not need:
        return
    if r["data"] in generations:
        have = len(generations[r["data"]]["seeds"])
        source = f"generation '{r['data']}' has {have} seeds"
    elif any(r["data"] in config[section] for section in PAIRS_SECTIONS):
        have = 1
        source = f"the pairs of '{r['data']}' hold one negative each (at least)"
    else:
        mapping = datasets[r["data"]]["mapping"]
        if isinstance(mapping.get("negatives"), str):
            return  # a column pattern: counted per record when the run reads the data (read_pairs)
        have = len(mapping["negatives"]) if mapping.get("negatives") else 1 if mapping.get("rejected") else 0
        source = f"dataset '{r['data']}' maps {have} negative response(s)"
    if have < need:
        raise ConfigError(f"config error at runs.{name}: {method} needs {need} negatives per example "
                          f"(m={r.get('m')}, epochs={r['epochs']}, sample={r.get('sample')}); {source}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in first:
                raise ConfigError(f"{self.name}:{key_node.start_mark.line + 1}: the key '{key_node.value}' is given "
                                  f"twice in one mapping (first at line {first[key] + 1}); YAML would keep the last")
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def check_yaml_file(path: str) -> None:
    """A config file (which Snakemake has parsed already) has no key twice in one mapping."""
    with open(path, encoding="utf-8") as f:
        yaml.load(f, Loader=_UniqueKeyLoader)


def dataset_splits(d: dict) -> set[str]:
    """The splits a dataset entry defines: its local files' names, else its `splits`."""
    return set(d["path"]) if d.get("path") else set(d["splits"])


def split_readers(config: dict):
    """(key path, dataset, split) of every dataset split a stage reads (a dataset used as data: its train)."""
    datasets = config["datasets"]
    for section in ("generations", "step_controlled", "answer_sets"):
        for name, g in config[section].items():
            yield f"{section}.{name}.split", g["dataset"], g["split"]
    for name, e in config["evals"].items():
        if e.get("synthetic"):
            yield f"evals.{name}.synthetic.split", e["synthetic"]["dataset"], e["synthetic"]["split"]
    for name, r in config["runs"].items():
        if r["data"] in datasets:
            yield f"runs.{name}.data", r["data"], "train"
    for name, b in config["bridges"].items():
        if b["source"] in datasets:
            yield f"bridges.{name}.source", b["source"], "train"


def check_splits(config: dict) -> None:
    for where, dataset, split in split_readers(config):
        known = dataset_splits(config["datasets"][dataset])
        if split not in known:
            raise ConfigError(f"config error at {where}: dataset '{dataset}' has no split '{split}' "
                              f"(its splits: {sorted(known)})")


def check_plain_values(value, where: str = "(top level)") -> None:
    """Names are strings (a run called 123 must be quoted) and numbers finite (`.nan`, `.inf` are YAML's)."""
    if isinstance(value, dict):
        for key, v in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"config error at {where}: the key {key!r} is not a string "
                                  f"({type(key).__name__}); names are strings (quote it: '{key}')")
            check_plain_values(v, key if where == "(top level)" else f"{where}.{key}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_plain_values(v, f"{where}.{i}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config error at {where}: {value} is not a finite number")


def model_loaders(config: dict):
    """(key path, settings) of every stage setting that loads a model through a backend."""
    for section in ("generations", "step_controlled", "bridges", "answer_sets"):
        for name, g in config[section].items():
            yield f"{section}.{name}", g
    for name, r in config["runs"].items():
        if r.get("generation"):
            yield f"runs.{name}.generation", r["generation"]
    for name, e in config["evals"].items():
        if e["kind"] == "lm_eval":
            yield f"evals.{name}", e
        elif "judge" in e:
            yield f"evals.{name}.judge", e["judge"]


def check_attention(config: dict) -> None:
    """`attn_implementation` is a transformers setting: a stage that runs vLLM cannot honour it."""
    for where, settings in model_loaders(config):
        if settings.get("attn_implementation") and settings.get("backend") == "vllm":
            raise ConfigError(f"config error at {where}.attn_implementation: the vllm backend picks its own attention "
                              f"kernel (VLLM_ATTENTION_BACKEND); attn_implementation is for backend hf")


def expand_spin(config: dict) -> None:
    """SPIN run R with K iterations -> runs R_iter1 .. R_iter{K-1} and R (the last iteration).

    Iteration k trains from iteration k-1's model (the run's model for k = 1), uses that model
    as its reference, and its rejected responses are that model's own generations.
    """
    runs = config["runs"]
    for name in [n for n, r in runs.items() if r["method"] == "spin"]:
        r = runs[name]
        names = [f"{name}_iter{k}" for k in range(1, r["iterations"])] + [name]
        for k, iteration in enumerate(names, start=1):
            if iteration != name and iteration in runs:
                raise ConfigError(f"config error at runs.{iteration}: the name is taken by iteration {k} of spin run "
                                  f"'{name}'")
            runs[iteration] = dict(r, ref=None, ref_logps="live", spin={
                "run": name, "iteration": k, "previous": names[k - 2] if k > 1 else None})


def resolve_chat_templates(config: dict) -> None:
    """Each model's `chat_template` (a name or a Jinja string) becomes its Jinja text, checked to parse."""
    for name, m in config["models"].items():
        if m.get("chat_template") is not None:
            try:
                m["chat_template"] = chat_templates.resolve(m["chat_template"], f"models.{name}.chat_template")
            except ValueError as e:
                raise ConfigError(f"config error at {e}") from None


def check_config(config: dict, schema_path: str) -> dict:
    check_plain_values(config)
    validate_schema(config, schema_path)
    resolve_chat_templates(config)
    check_references(config)
    check_splits(config)
    check_attention(config)
    expand_spin(config)
    return config
