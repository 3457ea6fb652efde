"""Optional experiment tracking through accelerate's trackers (TensorBoard, Weights & Biases, MLflow and
the others accelerate supports): the run's hyper-parameters, then each optimizer step's record of
train_log.jsonl as it is logged, so that curves can be compared while runs train.

Off by default (config `tracking.report_to`). Trackers write under the run's `tracking/` folder
(TensorBoard's event files, W&B's run folder); credentials and modes come only from the environment
(`WANDB_API_KEY`, `WANDB_MODE=offline`, `MLFLOW_TRACKING_URI`, ...), never from the config.
"""
from __future__ import annotations

import json

from accelerate.utils import LoggerType

TRACKERS = tuple(t.value for t in LoggerType if t.value != "all")


def tracker_names(value: str) -> list[str]:
    """The trackers of a comma-separated list (`none` or empty: none), each one accelerate knows."""
    names = [n for n in value.split(",") if n not in ("", "none")]
    unknown = sorted(set(names) - set(TRACKERS))
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}: accelerate supports {list(TRACKERS)}")
    return names


def flat(values: dict, prefix: str = "") -> dict:
    """Nested settings as the flat scalars trackers store (`lora.r`; a list or None as its JSON text:
    TensorBoard's hparams take neither)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if value is None or isinstance(value, (list, tuple)) else value
    return out


def start(accelerator, requested: list[str], project: str, run_name: str, hp: dict) -> None:
    """Start the trackers (main process) with the run's hyper-parameters; a requested tracker whose package
    is missing is an error, not a silent no-op (accelerate only warns)."""
    started = {str(t) for t in accelerator.log_with}
    missing = [t for t in requested if t not in started]
    if missing:
        raise RuntimeError(f"tracking.report_to asks for {missing}, but the package is not installed here")
    if requested:
        accelerator.init_trackers(project, config=flat(hp),
                                  init_kwargs={"wandb": {"name": run_name, "dir": str(accelerator.logging_dir)}})


def log_step(accelerator, record: dict) -> None:
    """One optimizer step's record (its metrics at its step), to every started tracker."""
    if accelerator.log_with:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
