"""Results tables from eval JSON: LaTeX (booktabs, best per column in bold), CSV and Markdown.

One row per entry of the table's `rows` (a run or a base model), in config order; a run with
several training seeds shows mean ± std over them. A missing score is an error, not a blank.
"""
from __future__ import annotations

import argparse
import json
import statistics

from .io import InputError, atomic_path, read_json, run_cli


def collect(table: dict, files: dict[str, list[str]]) -> list[dict]:
    """Per row: label and, per column, the list of values over seeds (scaled)."""
    rows = []
    for name in table["rows"]:
        values = {}
        for col in table["columns"]:
            vals = []
            for path in files[name]:
                scores = read_json(path).get("scores", {})
                try:
                    vals.append(float(scores[col["task"]][col["metric"]]) * table["scale"])
                except KeyError:
                    raise InputError(path, f"no score for task '{col['task']}' metric '{col['metric']}' "
                                     f"(table column '{col['label']}')", field=f"scores.{col['task']}") from None
            values[col["label"]] = vals
        if table["average"]:
            per_seed = list(zip(*values.values()))
            values["Avg"] = [statistics.fmean(v) for v in per_seed]
        rows.append({"name": name, "values": values})
    return rows


def summarise(vals: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def render(table: dict, rows: list[dict]) -> dict[str, str]:
    labels = list(rows[0]["values"])
    best = {lab: max(summarise(r["values"][lab])[0] for r in rows) for lab in labels}
    digits = table["digits"]

    def cell(vals, lab, bold_fmt):
        mean, std = summarise(vals)
        text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
        return bold_fmt(text) if round(mean, digits) == round(best[lab], digits) else text

    def tex_escape(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    tex_rows = [" & ".join([tex_escape(r["name"])] + [
        cell(r["values"][lab], lab, lambda t: rf"\textbf{{{t}}}").replace("±", r"$\pm$") for lab in labels]) + r" \\"
        for r in rows]
    tex = "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{table['caption']}}}", rf"\label{{tab:{table['name']}}}",
        r"\begin{tabular}{l" + "c" * len(labels) + "}", r"\toprule",
        " & ".join(["Method"] + [tex_escape(lab) for lab in labels]) + r" \\", r"\midrule", *tex_rows,
        r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])
    md = "\n".join([
        "| Method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|",
        *["| " + " | ".join([r["name"]] + [cell(r["values"][lab], lab, lambda t: f"**{t}**") for lab in labels]) + " |"
          for r in rows], "", f"{table['caption']}", ""])
    csv_lines = [",".join(["method"] + [f"{lab},{lab}_std,{lab}_n" for lab in labels])]
    for r in rows:
        fields = [r["name"]]
        for lab in labels:
            mean, std = summarise(r["values"][lab])
            fields += [f"{mean:.6f}", "" if std is None else f"{std:.6f}", str(len(r["values"][lab]))]
        csv_lines.append(",".join(fields))
    return {"tex": tex, "md": md, "csv": "\n".join(csv_lines) + "\n"}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the table's config entry with 'name'")
    parser.add_argument("--files", required=True, help="JSON: row name -> eval JSON files (one per seed)")
    parser.add_argument("--prefix", required=True, help="output path without extension")
    args = parser.parse_args(argv)
    table = json.loads(args.params)
    outputs = render(table, collect(table, json.loads(args.files)))
    for ext, text in outputs.items():
        with atomic_path(f"{args.prefix}.{ext}") as tmp:
            tmp.write_text(text)
    print(outputs["md"])


if __name__ == "__main__":
    run_cli(main)
