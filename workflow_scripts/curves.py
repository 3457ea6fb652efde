"""Training curves of one trained instance: its `train_log.jsonl` as a PNG.

One small panel per metric the trainer logged (the loss first, then the method's own metrics,
then the learning rate and the gradient norm), x = optimizer step, epoch boundaries dotted. With
many steps the raw points are drawn faintly under a centred moving average. The PNG has no
metadata (no software version, no time): the same log gives the same bytes.
"""
from __future__ import annotations

import argparse
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.style  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .io import InputError, atomic_path, read_jsonl, run_cli  # noqa: E402

X_FIELDS = ("step", "epoch")  # the x axis and the epoch boundaries, not panels
LAST = ("lr", "grad_norm")  # optimizer diagnostics after the method's metrics
COLUMNS = 3
PANEL_SIZE = (4.0, 2.6)  # inches per panel
DPI = 100
SMOOTH_FROM = 30  # points from which a moving average is drawn over the raw ones
UNSMOOTHED = ("lr",)  # a schedule, not a noisy measurement


def validate_entry(record: dict, error) -> None:
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise error("missing or not a non-negative integer", "step")
    if "loss" not in record:
        raise error("missing", "loss")
    for field, value in record.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise error(f"not a number: {value!r}", field)


def read_log(path: str) -> list[dict]:
    """The log's entries, one per optimizer step, steps strictly increasing."""
    previous: list[int] = []

    def validate(record: dict, error) -> None:
        validate_entry(record, error)
        if previous and record["step"] <= previous[-1]:
            raise error(f"step {record['step']} does not follow step {previous[-1]}", "step")
        previous.append(record["step"])

    entries = read_jsonl(path, validate)
    if not entries:
        raise InputError(path, "no training steps logged (empty file)")
    return entries


def metric_names(entries: list[dict]) -> list[str]:
    """Panels in order: loss, the method's metrics (sorted, so rewards/* and logps/* sit together), lr, grad_norm."""
    present = {k for e in entries for k, v in e.items() if v is not None} - set(X_FIELDS)
    middle = sorted(present - {"loss", *LAST})
    return ["loss", *middle, *[k for k in LAST if k in present]]


def moving_average(values: list[float], window: int) -> list[float]:
    """Centred mean over `window` points, ignoring missing (NaN) ones; shorter at the ends. O(n)."""
    sums, counts = [0.0], [0]
    for v in values:
        finite = not math.isnan(v)
        sums.append(sums[-1] + (v if finite else 0.0))
        counts.append(counts[-1] + finite)
    half, n = window // 2, len(values)
    out = []
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        count = counts[hi] - counts[lo]
        out.append((sums[hi] - sums[lo]) / count if count else math.nan)
    return out


def _finite(value) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.nan


def smoothing_window(n_points: int) -> int | None:
    """Odd window of the moving average (about 5% of the points), or None for few points."""
    return max(5, n_points // 20) | 1 if n_points >= SMOOTH_FROM else None


def plot(entries: list[dict], title: str) -> Figure:
    names = metric_names(entries)
    window = smoothing_window(len(entries))
    if window:
        title += f" (faint: every step; line: centred mean of {window})"
    cols = min(COLUMNS, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 0.4), dpi=DPI, layout="constrained")
    fig.suptitle(title)
    # the last step of each epoch but the final one (the trainer logs epoch = k at the end of epoch k)
    epochs = [e["step"] for e in entries[:-1]
              if e.get("epoch") is not None and e["epoch"] >= 1 and abs(e["epoch"] - round(e["epoch"])) < 1e-6]
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = [(e["step"], _finite(e[name])) for e in entries if e.get(name) is not None]
        steps, values = [p[0] for p in points], [p[1] for p in points]
        for boundary in epochs:
            ax.axvline(boundary, color="0.8", linestyle=":", linewidth=0.8)
        if name in UNSMOOTHED:
            ax.plot(steps, values, color="C0", linewidth=1.2)
        elif window and len(points) >= SMOOTH_FROM:
            ax.plot(steps, values, color="C0", alpha=0.3, linewidth=0.8, marker=".", markersize=2)
            ax.plot(steps, moving_average(values, window), color="C0", linewidth=1.6)
        else:
            ax.plot(steps, values, color="C0", linewidth=1.2, marker="o", markersize=3)
        if all(math.isnan(v) for v in values):
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("optimizer step", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.grid(True, color="0.92", linewidth=0.6)
    return fig


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", required=True, help="a trained instance's train_log.jsonl")
    parser.add_argument("--run", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    entries = read_log(args.log)
    with matplotlib.style.context("default"):  # the same picture whatever the local matplotlibrc says
        fig = plot(entries, f"{args.run} ({args.method}), seed {args.seed}: {len(entries)} steps")
        with atomic_path(args.output) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    print(f"{args.output}: {len(metric_names(entries))} metrics over {len(entries)} steps")


if __name__ == "__main__":
    run_cli(main)
