"""The eval kinds' catalogue: the metrics each kind's JSON holds (what a table column may name), and
whether a judge runs a model in the job."""
from __future__ import annotations

MATH_METRICS = ("accuracy", "answered")


HEAD2HEAD_METRICS = {
    "alpaca_eval": ("win_rate", "standard_error", "discrete_win_rate", "n_wins", "n_wins_base", "n_draws",
                    "n_total", "avg_length"),
    "pairwise": ("win", "tie", "loss", "adjusted_win_rate", "n_total"),
}


# FastChat's pairwise result columns (counts, then fractions of the judged matches) and the failures
FASTCHAT_METRICS = ("win", "loss", "tie", "win_rate", "loss_rate", "win_rate_adjusted", "n_judged", "judge_failures",
                    "n_total")


def runs_model_here(judge: dict) -> bool:
    """Whether a judge runs a configured model in the job (a GPU job on the cluster)."""
    return judge["kind"] == "local" or (judge["kind"] == "fastchat" and judge["via"] == "local")


def metric_list(task: dict) -> list[str]:
    """An lm-eval task's kept metrics (`metric` is one name or a list)."""
    return [task["metric"]] if isinstance(task["metric"], str) else list(task["metric"])


def eval_metrics(e: dict) -> dict[str, set[str]]:
    """Task -> the metrics an eval's JSON holds (what a table column may name)."""
    if e["kind"] == "lm_eval":
        return {t["task"]: set(metric_list(t)) for t in e["tasks"]}
    if e["kind"] == "math":
        return {a: set(MATH_METRICS) for a in e["answer_sets"]}
    if e["judge"]["kind"] == "fastchat":
        return {e["kind"]: set(FASTCHAT_METRICS)}
    metrics = set(HEAD2HEAD_METRICS[e["kind"]])
    if e["kind"] == "alpaca_eval" and e["difficulty_file"]:
        metrics |= {"length_controlled_winrate", "lc_standard_error"}
    return {e["kind"]: metrics}


def annotator_configs() -> set[str] | None:
    """The annotator configs alpaca_eval ships (found without importing it); None where it is not installed
    (e.g. the node that only plans: the judging job checks again)."""
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("alpaca_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(spec.submodule_search_locations[0]) / "evaluators_configs"
    return {p.parent.name for p in root.glob("*/configs.yaml")}
