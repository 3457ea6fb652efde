"""Config checks at start-up: the JSON schema (with defaults) and the cross-references.

Kept free of torch so that planning stays fast. Every error names the key path.
"""
from __future__ import annotations

import re

import jsonschema
import yaml

NAME = re.compile(r"^[A-Za-z0-9_]+$")
COMMON_KEYS = ["method", "lr", "epochs", "batch_size", "micro_batch_size", "warmup_ratio", "weight_decay",
               "max_grad_norm", "adam_betas", "adam_eps", "schedule", "dtype", "max_length", "max_prompt_length",
               "prompt_format"]
METHOD_KEYS = {  # hyper-parameters each method reads, beyond COMMON_KEYS
    "sft": [],
    "dpo": ["beta"],
    "dft": ["tau", "gamma", "m", "sample", "reset_visited"],
    "dft2": ["tau", "gamma", "m", "sample", "reset_visited"],
}
NEEDS_REF = {"sft": False, "dpo": True, "dft": True, "dft2": False}


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
    """Validate in place, filling defaults; the first error names its key path."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"config error at {where}: {e.message}")


def check_references(config: dict) -> None:
    models, datasets, generations = config["models"], config["datasets"], config["generations"]
    runs, evals, tables = config["runs"], config["evals"], config["tables"]
    for section in ("models", "datasets", "generations", "runs", "evals", "tables"):
        for name in config[section]:
            if not NAME.match(name):
                raise ConfigError(f"config error at {section}.{name}: names may only use letters, digits and '_'")
    clash = set(models) & set(runs)
    if clash:
        raise ConfigError(f"config error: {sorted(clash)} name both a model and a run")
    clash = set(datasets) & set(generations)
    if clash:
        raise ConfigError(f"config error: {sorted(clash)} name both a dataset and a generation")

    def need(where, value, known, what):
        if value not in known:
            raise ConfigError(f"config error at {where}: unknown {what} '{value}' (known: {sorted(known)})")

    for name, g in generations.items():
        need(f"generations.{name}.model", g["model"], models, "model")
        need(f"generations.{name}.dataset", g["dataset"], datasets, "dataset")
    for name, r in runs.items():
        need(f"runs.{name}.method", r["method"], METHOD_KEYS, "method")
        need(f"runs.{name}.model", r["model"], models, "model")
        need(f"runs.{name}.data", r["data"], {**datasets, **generations}, "dataset or generation")
        if r.get("ref") is not None:
            need(f"runs.{name}.ref", r["ref"], models, "model")
        if r["max_prompt_length"] >= r["max_length"]:
            raise ConfigError(f"config error at runs.{name}: max_prompt_length must be below max_length")
        if r["method"] in {"dft", "dft2"} and r["data"] not in generations:
            raise ConfigError(f"config error at runs.{name}.data: {r['method']} needs generated negatives "
                              f"(a generation), not the dataset '{r['data']}'")
        if r["data"] in generations:
            have = len(generations[r["data"]]["seeds"])
            m = r["m"] if r["method"] in {"dft", "dft2"} else 1
            need_n = m * r["epochs"] if r["method"] in {"dft", "dft2"} and r["sample"] else m
            if have < need_n:
                raise ConfigError(f"config error at runs.{name}: needs {need_n} negatives per example "
                                  f"(m={m}, epochs={r['epochs']}, sample={r.get('sample')}); "
                                  f"generation '{r['data']}' has {have} seeds")
    for name, e in evals.items():
        if e.get("synthetic"):
            need(f"evals.{name}.synthetic.dataset", e["synthetic"]["dataset"], datasets, "dataset")
    for name, t in tables.items():
        need(f"tables.{name}.eval", t["eval"], evals, "eval")
        for row in t["rows"]:
            need(f"tables.{name}.rows", row, {**models, **runs}, "run or model")
        tasks = {task["task"]: task["metric"] for task in evals[t["eval"]]["tasks"]}
        for col in t["columns"]:
            if tasks.get(col["task"]) != col["metric"]:
                raise ConfigError(f"config error at tables.{name}.columns: task '{col['task']}' with metric "
                                  f"'{col['metric']}' is not among eval '{t['eval']}' tasks {tasks}")


def check_config(config: dict, schema_path: str) -> dict:
    validate_schema(config, schema_path)
    check_references(config)
    return config


def run_hyperparameters(run: dict, seed: int) -> dict:
    """Only the keys the run's method reads, so that an unrelated default never reruns it."""
    keys = COMMON_KEYS + METHOD_KEYS[run["method"]]
    hp = {k: run[k] for k in keys if k in run}
    hp["seed"] = seed
    return hp
