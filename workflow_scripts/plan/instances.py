"""The plan's pure functions of the config (no torch, no Snakemake): the instances the tables evaluate,
the answer sets each needs, and which answer sets one job generates together.

An answer group is the answer sets needed by the same evaluated instances and generated with the same
engine settings: a model that needs one of them needs all of them, so none is generated in vain, and
the model is loaded once per group instead of once per set (a 7B vLLM engine takes minutes to start;
on CPU the imports alone take ~20 s). A group is named by its sets, joined with `+` in the config's
order; a set alone is a group of its own name. Answer sets no evaluation needs are in no group.
"""
from __future__ import annotations

# The settings of the engine that answers: sets that differ in one of them cannot share a model load.
ENGINE_KEYS = ("backend", "dtype", "attn_implementation", "batch_size", "shard_size", "max_model_len",
               "gpu_memory_utilization", "threads", "over_long_prompts")


def subjects(config: dict, row: str) -> list[str]:
    """Evaluated instances of a table row: each training seed of a run (`run/seedS`), or a base model
    (`model/base`)."""
    if row in config["runs"]:
        return [f"{row}/seed{s}" for s in config["runs"][row]["seeds"]]
    return [f"{row}/base"]


def subject_model_name(config: dict, subject: str) -> str:
    """The configured model behind an evaluated instance (a run's base model, or the model itself)."""
    name, instance = subject.split("/")
    return name if instance == "base" else config["runs"][name]["model"]


def evaluated(config: dict) -> list[tuple[str, str]]:
    """(instance, eval) of every table cell, each once, in the tables' order."""
    pairs = {}
    for t in config["tables"].values():
        evals = dict.fromkeys(col["eval"] or t["eval"] for col in t["columns"])
        pairs.update(((s, e), None) for row in t["rows"] for e in evals for s in subjects(config, row))
    return list(pairs)


def head2head_reference(config: dict, subject: str, eval_name: str) -> str | None:
    """The instance whose answers a judged eval compares an instance's with: for pairwise its starting
    model; for alpaca_eval the configured model / run (its first seed); None for the split's `chosen`."""
    e = config["evals"][eval_name]
    ref = subject_model_name(config, subject) if e["kind"] == "pairwise" else e["reference"]
    return None if ref == "dataset" else subjects(config, ref)[0]


def answer_set_needs(config: dict) -> dict[str, set[str]]:
    """Answer set -> the instances whose answers to it an evaluation reads (a judge's reference too)."""
    needs: dict[str, set[str]] = {}
    for subject, name in evaluated(config):
        e = config["evals"][name]
        if e["kind"] == "math":
            for a in e["answer_sets"]:
                needs.setdefault(a, set()).add(subject)
        elif e["kind"] in ("alpaca_eval", "pairwise"):
            reference = head2head_reference(config, subject, name)
            needs.setdefault(e["answer_set"], set()).update({subject} | ({reference} if reference else set()))
    return needs


def answer_groups(config: dict) -> dict[str, list[str]]:
    """Group name -> its answer sets, in the config's order."""
    needs = answer_set_needs(config)
    groups: dict[tuple, list[str]] = {}
    for name, settings in config["answer_sets"].items():
        if name in needs:
            key = (frozenset(needs[name]), tuple(repr(settings.get(k)) for k in ENGINE_KEYS))
            groups.setdefault(key, []).append(name)
    return {"+".join(sets): sets for sets in groups.values()}


def group_of(config: dict) -> dict[str, str]:
    """Answer set -> the name of its group."""
    return {a: group for group, sets in answer_groups(config).items() for a in sets}
