"""Model cards in the hub's format (YAML metadata, then Markdown) for trained models: what a model was
trained from, on what, with which method, hyper-parameters and seed, and which evaluation gave which
score.

Rule model_card writes the card of every trained instance beside its model folder
(`results/train/<run>/seed<S>/model_card.md`), from its run.json and, once they exist, the evaluations
the tables ask of it; rule push uploads it as the repo's README.md. (Not inside the folder: the folder
is the training job's output, and editing a card must not rerun a training.)
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .io import InputError, atomic_path, read_json, run_cli

METHOD_NAMES = {
    "sft": "supervised fine-tuning (SFT)", "dynft": "Dynamic Fine-Tuning (DFT, Wu et al. 2025)",
    "dpo": "Direct Preference Optimization (DPO)", "scdpo": "Step-Controlled DPO (SCDPO)",
    "spin": "Self-Play Fine-Tuning (SPIN)", "dpo_bmc": "DPO-BMC (bridging and modeling correlations)",
    "simpo": "SimPO", "simpo_sft": "SimPO with an SFT term", "kto": "Kahneman-Tversky Optimization (KTO)",
    "dft": "Discriminative Fine-Tuning (DFT)", "dft2": "Discriminative Fine-Tuning (DFT2)",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def metadata(run: dict) -> ModelCardData:
    """The card's YAML header: the base model (when it is a hub id), library and tags."""
    base = run["base_model"]["model"]
    return ModelCardData(model_name=f"{run['run']}/seed{run['seed']}", library_name="transformers",
                         base_model=base if HUB_ID.match(base) else None,
                         tags=["post-training", run["method"], *(["lora"] if run["hyperparameters"].get("lora") else [])])


def training_section(run: dict) -> str:
    base, ref = run["base_model"], run["reference"]
    lines = [f"# {run['run']} (seed {run['seed']})", "",
             f"Trained from `{base['model']}`" + (f" at revision `{base['revision']}`" if base["revision"] else "")
             + f" with {METHOD_NAMES.get(run['method'], run['method'])} on `{run['data']}` "
             f"(sha256 `{run['digests']['data'][:16]}...`), seed {run['seed']}.", ""]
    if ref["source"]:
        lines += [f"Reference model: `{ref['model']}` ({'log-probs cached before training' if ref['source'] == 'cache' else 'live'}).", ""]
    lines += [f"{run['optimizer_steps']} optimizer steps of {run['effective_global_batch']} examples "
              f"({run['world_size']} process(es), {run['gradient_accumulation_steps']} accumulation step(s), "
              f"{run['distributed_type']}); final training loss {run['final_loss']:.4f}.", "",
              "| hyper-parameter | value |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in sorted(run["hyperparameters"].items())]
    return "\n".join(lines)


def evaluation_section(evaluations: dict[str, dict]) -> str:
    """One row per (eval, task, metric): its value, ± the standard error the eval recorded; then each
    eval's protocol."""
    if not evaluations:
        return "## Evaluation\n\nNo evaluation of this instance is in the tables."
    lines = ["## Evaluation", "", "| eval | task | metric | value |", "|---|---|---|---|"]
    for name, result in evaluations.items():
        for task, scores in result["scores"].items():
            for metric, value in scores.items():
                if metric != "stderr" and isinstance(value, (int, float)):
                    err = scores.get("stderr", {}).get(metric)
                    shown = f"{value:.4f}" + (f" ± {err:.4f}" if isinstance(err, (int, float)) else "")
                    lines.append(f"| {name} | {task} | {metric} | {shown} |")
    lines += ["", *(f"- {name}: {result.get('protocol', {}).get('summary', '')}" for name, result in evaluations.items())]
    return "\n".join(lines)


def read_eval(path: str) -> dict:
    """An eval JSON, refused by name when it holds no scores."""
    result = read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("scores"), dict):
        raise InputError(path, "an eval JSON needs a 'scores' object (task -> metric -> value)", field="scores")
    return result


def render(run: dict, evaluations: dict[str, dict]) -> str:
    """The card of a run (its run.json) with its evaluations (eval name -> eval JSON)."""
    versions = ", ".join(f"{k} {v}" for k, v in sorted(run["versions"].items()) if v)
    body = "\n\n".join([training_section(run), evaluation_section(evaluations),
                        f"## Framework versions\n\n{versions}"])
    return str(ModelCard(f"---\n{metadata(run).to_yaml()}\n---\n\n{body}\n"))


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-json", required=True)
    parser.add_argument("--evals", nargs="*", default=[], help="the instance's eval JSONs (`<eval>.json`)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    card = render(read_json(args.run_json), {Path(path).stem: read_eval(path) for path in args.evals})
    with atomic_path(args.output) as tmp:
        tmp.write_text(card)


if __name__ == "__main__":
    run_cli(main)
