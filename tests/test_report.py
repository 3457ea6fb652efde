"""Training-curve plots (workflow_scripts/curves.py) and the Snakemake report of the mini run."""
import json
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_workflow import snakemake
from workflow_scripts import curves
from workflow_scripts.io import InputError

ROOT = Path(__file__).resolve().parents[1]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def png_chunks(data: bytes) -> list[bytes]:
    chunks, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        chunks.append(data[i + 4:i + 8])
        i += 12 + n
    return chunks


def dpo_log(steps: int = 40, per_epoch: int = 20) -> list[dict]:
    """A fixed DPO-shaped log: one entry per optimizer step, two epochs."""
    return [{"step": s, "epoch": s / per_epoch, "loss": 0.69 * 0.97 ** s + 0.01 * (s % 3),
             "lr": 1e-4 * min(1.0, s / 4), "grad_norm": 2.0 / s, "rewards/margin": 0.05 * s - 0.02 * (s % 2),
             "rewards/accuracy": min(1.0, s / 10)} for s in range(1, steps + 1)]


def write_log(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    return path


def plot(log: Path, output: Path, run="dpo", method="dpo", seed=42) -> None:
    curves.main(["--log", str(log), "--run", run, "--method", method, "--seed", str(seed), "--output", str(output)])


def test_curves_png_size_and_identical_bytes_on_rerun(tmp_path):
    log = write_log(tmp_path / "train_log.jsonl", dpo_log())
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    plot(log, first)
    plot(log, second)
    data = first.read_bytes()
    assert data == second.read_bytes()
    # loss, rewards/accuracy, rewards/margin, lr, grad_norm: 5 panels -> 3 columns x 2 rows
    assert curves.metric_names(dpo_log()) == ["loss", "rewards/accuracy", "rewards/margin", "lr", "grad_norm"]
    width, height = curves.PANEL_SIZE[0] * 3, curves.PANEL_SIZE[1] * 2 + 0.4
    assert png_size(data) == (round(width * curves.DPI), round(height * curves.DPI))
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(png_chunks(data))  # no software version, no time
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_curves_few_steps_and_sparse_metrics(tmp_path):
    """A short log (no smoothing) whose metric appears on some steps only (KTO's rewards/chosen)."""
    entries = [{"step": s, "epoch": s / 4, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 1.0, "kl": 0.0}
               for s in range(1, 5)]
    entries[1]["rewards/chosen"] = 0.5
    entries[3]["rewards/chosen"] = float("nan")  # a diverged value is drawn as a gap, not refused
    log = write_log(tmp_path / "train_log.jsonl", entries)
    plot(log, tmp_path / "kto.png", run="kto", method="kto")
    assert png_size((tmp_path / "kto.png").read_bytes()) == (1200, round((curves.PANEL_SIZE[1] * 2 + 0.4) * 100))
    assert curves.metric_names(entries) == ["loss", "kl", "rewards/chosen", "lr", "grad_norm"]


@pytest.mark.parametrize("lines, message", [
    (['{"step": 1, "loss": 0.5}', '{"step": 2, "loss": "0.4"}'], "line 2, field 'loss': not a number: '0.4'"),
    (['{"step": 1, "loss": 0.5}', '{"loss": 0.4}'], "line 2, field 'step': missing or not a non-negative integer"),
    (['{"step": 1, "loss": 0.5}', '{"step": 2, "lr": 0.1}'], "line 2, field 'loss': missing"),
    (['{"step": 1, "loss": 0.5}', '{"step": 2, "loss": 0.4', ''], "line 2: invalid JSON"),
    (['{"step": 1, "loss": 0.5}', '', '{"step": 1, "loss": 0.4}'],
     "line 3, field 'step': step 1 does not follow step 1"),
    (['{"step": 1, "loss": 0.5, "rewards": {"margin": 1}}'], "line 1, field 'rewards': not a number"),
    ([''], "no training steps logged (empty file)"),
])
def test_curves_bad_log_names_file_line_field_and_writes_nothing(tmp_path, lines, message):
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    output = tmp_path / "plots/out.png"
    with pytest.raises(InputError) as e:
        plot(log, output)
    assert str(e.value).startswith(str(log)) and message in str(e.value)
    assert not output.exists() and not output.parent.exists()


def test_curves_cli_missing_log_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "nope/train_log.jsonl"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.curves", "--log", str(missing), "--run", "x",
                           "--method", "sft", "--seed", "0", "--output", str(tmp_path / "x.png")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {missing}: file not found"
    assert not (tmp_path / "x.png").exists()


def trained_instances(results: Path) -> set[str]:
    return {str(p.parent.relative_to(results / "train")) for p in (results / "train").glob("*/seed*/train_log.jsonl")}


def test_mini_run_plots_every_trained_instance(mini_run):
    workdir, _ = mini_run
    res = workdir / "results"
    instances = trained_instances(res)
    # 12 single runs + the 2 iterations of spin
    assert len(instances) == 14 and {"spin_iter1/seed42", "spin/seed42", "dpo_ddp/seed42"} <= instances
    plots = {str(p.relative_to(res / "plots"))[: -len(".png")] for p in (res / "plots").glob("*/*.png")}
    assert plots == instances
    for instance in instances:
        assert png_size((res / f"plots/{instance}.png").read_bytes())[0] == 1200
        assert "metrics over" in (res / f"logs/curves/{instance}.log").read_text()


def test_report_zip_holds_tables_and_every_plot(mini_run, tmp_path):
    workdir, config_path = mini_run
    res = workdir / "results"
    report = tmp_path / "report.zip"
    result = snakemake(workdir, "--configfile", config_path, "--report", str(report), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    with zipfile.ZipFile(report) as z:
        members = {name: z.read(name) for name in z.namelist() if not name.endswith("/")}
    contents = set(members.values())
    tables, plots = sorted((res / "tables").glob("*.md")), sorted((res / "plots").glob("*/*.png"))
    assert res / "tables/mini_table.md" in tables and len(plots) == 14
    expected = tables + plots
    missing = [str(p.relative_to(res)) for p in expected if p.read_bytes() not in contents]
    assert not missing, missing
    # the categories, the captions (rendered per instance) and the workflow description are in the report
    pages = [data for name, data in members.items() if name.endswith((".html", ".js"))]
    text = b"\n".join(pages).decode(errors="replace")
    for needle in ("Training curves", "Tables", "spin_iter1", "Post-training methods compared end to end",
                   "Dotted vertical lines mark the ends of epochs"):
        assert needle in text, needle
    assert re.search(r"Training curves of run <tt[^>]*>kto</tt> \(method <tt[^>]*>kto</tt>\)", text)
    assert re.search(r'"spin": \[[^\]]*"results/plots/spin_iter1/seed42.png"', text)  # iterations under their run
