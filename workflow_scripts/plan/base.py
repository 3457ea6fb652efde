"""What every part of the plan shares: the results folder, the params' JSON, the code a stage is made of,
and the models jobs load (`ModelRef`: where, which revision, the files to wait for, the config's flags)."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Callable

from ..imports import import_closure
from ..io import atomic_path

R = "results"


def js(obj) -> str:
    """Compact, key-sorted JSON for params (a change reruns the rule, nothing else does)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def json_file(obj) -> str:
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


def code(stage: str) -> list[str]:
    """A stage module and every project module it imports, listed as inputs: editing any of them reruns
    the stage (and what depends on it), and nothing else."""
    return [str(path) for path in import_closure(stage)]


def split_file(dataset: str, split: str) -> str:
    """A normalised split of a dataset (the data stage's output)."""
    return f"{R}/data/{dataset}/{split}.jsonl"


def pattern(names) -> str:
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(names) or "(?!)"


@dataclass(frozen=True)
class ModelRef:
    """A model a job loads: a path or hub id, its revision (hub models), the files the job waits for, and the
    flags its config entry sets (`--trust-remote-code`, `--chat-template`)."""
    location: str | None
    revision: str | None = None
    inputs: list[str] = field(default_factory=list)
    flags: str = ""

    def args(self, option: str = "--model", revision_option: str = "--revision", flags: bool = True) -> str:
        """The stage's command-line arguments naming the model (none for no model)."""
        if self.location is None:
            return ""
        revision = self.revision and f"{revision_option} {self.revision}"
        return " ".join(filter(None, [f"{option} {self.location}", revision, flags and self.flags]))


NO_MODEL = ModelRef(None)


class ModelOf:
    """A rule's model as a function of its wildcards, with the views a rule needs: the files (an input),
    the arguments and the location (params)."""

    def __init__(self, ref: Callable[..., ModelRef], **options):
        self.ref, self.options = ref, options

    def files(self, wildcards) -> list[str]:
        return list(self.ref(wildcards).inputs)

    def args(self, wildcards) -> str:
        return self.ref(wildcards).args(**self.options)

    def location(self, wildcards) -> str:
        return self.ref(wildcards).location


class Section:
    """A part of the plan: the resolved config, the workflow's folder, and the configured models."""

    def __init__(self, config: dict, basedir: str):
        self.config, self.basedir = config, basedir

    def model_ref(self, name: str, *also_loaded: str | None) -> ModelRef:
        """A configured model: built or converted here, a hub model at its revision, or a local folder."""
        m = self.config["models"][name]
        flags = self.model_flags(name, *also_loaded)
        if m.get("build") == "tiny" or "gguf" in m:
            return ModelRef(f"{R}/models/{name}", None, [f"{R}/models/{name}"], flags)
        if "hf_id" in m:
            return ModelRef(m["hf_id"], m["revision"], [], flags)
        return ModelRef(m["path"], None, [m["path"]], flags)

    def model_flags(self, name: str, *also_loaded: str | None) -> str:
        """The flags of a job loading the configured model `name` (and `also_loaded`, a run's reference):
        `--trust-remote-code` when one of their config entries turns it on, never by default; `--chat-template`
        with the template `name`'s entry sets (resolved to Jinja text), the one its prompts are rendered with."""
        trust = any(self.config["models"][n]["trust_remote_code"] for n in (name, *also_loaded) if n)
        template = self.config["models"][name].get("chat_template")
        return " ".join(filter(None, ["--trust-remote-code" if trust else "",
                                      template and f"--chat-template {shlex.quote(template)}"]))

    def data_file(self, name: str) -> str:
        """Training data named in the config: a dataset's train split, a generation's merged negatives,
        step-controlled pairs, bridged pairs or unpaired (labelled) data."""
        for section, folder in (("generations", "merge"), ("step_controlled", "step_controlled"),
                                ("bridges", "bridge"), ("unpaired", "unpaired")):
            if name in self.config[section]:
                return f"{R}/{folder}/{name}.jsonl"
        return split_file(name, "train")


def python(settings: dict) -> str:
    """The interpreter of a generating job: on the cluster the rule's conda env provides vllm; on a
    machine without conda, VLLM_PYTHON names an environment that has it (see the README)."""
    return os.environ.get("VLLM_PYTHON", "python") if settings["backend"] == "vllm" else "python"


def engine_env(settings: dict, default: str) -> str:
    """The conda env of a job that may run vLLM: the generate env (vllm, lm-eval, alpaca-eval) for the
    vllm backend, else the rule's own."""
    return "../envs/generate.yaml" if settings["backend"] == "vllm" else default


def engine_params(settings: dict, drop=()) -> str:
    """A generating stage's settings as JSON params, without the keys that do not change its output."""
    return js({k: v for k, v in settings.items() if k not in ("threads", *drop)})
