"""Results tables from eval JSON: LaTeX (booktabs, best per column in bold), CSV and Markdown.

One row per entry of the table's `rows` (a run or a base model), in config order; a run with
several training seeds shows mean ± std over them. A column reads one metric of one task of an eval
(the table's, or its own `eval`). A missing score is an error, not a blank. The caption ends with
the protocol each eval recorded (harness and version, shots, template, decoding, judge); rows of
one eval evaluated under different protocols are an error.
"""
from __future__ import annotations

import argparse
import json
import statistics

from .io import InputError, atomic_path, read_json, run_cli


def column_eval(table: dict, col: dict) -> str:
    return col.get("eval") or table["eval"]


def collect(table: dict, files: dict[str, dict[str, list[str]]]) -> tuple[list[dict], dict[str, str]]:
    """Per row: name and, per column label, the values over seeds (scaled); and each eval's protocol summary."""
    rows, summaries = [], {}
    for name in table["rows"]:
        values = {}
        for col in table["columns"]:
            ev, scale = column_eval(table, col), col.get("scale") or table["scale"]
            vals = []
            for path in files[name][ev]:
                result = read_json(path)
                try:
                    vals.append(float(result["scores"][col["task"]][col["metric"]]) * scale)
                except (KeyError, TypeError):
                    raise InputError(path, f"no score for task '{col['task']}' metric '{col['metric']}' "
                                     f"(table column '{col['label']}')", field=f"scores.{col['task']}") from None
                summary = result.get("protocol", {}).get("summary")
                if summaries.setdefault(ev, summary) != summary:
                    raise InputError(path, f"eval '{ev}' was run under another protocol than the table's other rows: "
                                     f"{summary!r} vs {summaries[ev]!r}", field="protocol.summary")
            values[col["label"]] = vals
        if table["average"]:
            averaged = [values[c["label"]] for c in table["columns"] if c.get("average", True)]
            values["Avg"] = [statistics.fmean(v) for v in zip(*averaged)]
        rows.append({"name": name, "values": values})
    return rows, summaries


def summarise(vals: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def caption(table: dict, summaries: dict[str, str]) -> str:
    protocols = [f"{ev}: {s}" if len(summaries) > 1 else s for ev, s in summaries.items() if s]
    return table["caption"].strip() + (f" Protocol: {'; '.join(protocols)}." if protocols else "")


def render(table: dict, rows: list[dict], summaries: dict[str, str] | None = None) -> dict[str, str]:
    columns = {c["label"]: c for c in table["columns"]}
    labels = list(rows[0]["values"])
    digits = {lab: (columns[lab].get("digits") if lab in columns else None) for lab in labels}
    digits = {lab: table["digits"] if d is None else d for lab, d in digits.items()}
    rule = {lab: columns[lab].get("best", "max") if lab in columns else "max" for lab in labels}
    best = {lab: {"max": max, "min": min}[rule[lab]](summarise(r["values"][lab])[0] for r in rows)
            for lab in labels if rule[lab] != "none"}
    lower = {lab: rule[lab] == "min" for lab in labels}
    text = caption(table, summaries or {})

    def cell(vals, lab, bold_fmt):
        mean, std = summarise(vals)
        d = digits[lab]
        out = f"{mean:.{d}f}" + (f" ± {std:.{d}f}" if std is not None else "")
        return bold_fmt(out) if lab in best and round(mean, d) == round(best[lab], d) else out

    def tex_escape(s: str) -> str:
        return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&") \
            .replace("#", r"\#").replace("$", r"\$")

    tex_rows = [" & ".join([tex_escape(r["name"])] + [
        cell(r["values"][lab], lab, lambda t: rf"\textbf{{{t}}}").replace("±", r"$\pm$") for lab in labels]) + r" \\"
        for r in rows]
    tex = "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(text)}}}", rf"\label{{tab:{table['name']}}}",
        r"\begin{tabular}{l" + "c" * len(labels) + "}", r"\toprule",
        " & ".join(["Method"] + [tex_escape(lab) + (r" ($\downarrow$)" if lower[lab] else "") for lab in labels])
        + r" \\", r"\midrule", *tex_rows, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])
    md = "\n".join([
        "| Method | " + " | ".join(lab + (" (↓)" if lower[lab] else "") for lab in labels) + " |",
        "|---" * (len(labels) + 1) + "|",
        *["| " + " | ".join([r["name"]] + [cell(r["values"][lab], lab, lambda t: f"**{t}**") for lab in labels]) + " |"
          for r in rows], "", text, ""])
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
    parser.add_argument("--files", required=True, help="JSON: row name -> eval name -> eval JSON files (one per seed)")
    parser.add_argument("--prefix", required=True, help="output path without extension")
    args = parser.parse_args(argv)
    table = json.loads(args.params)
    outputs = render(table, *collect(table, json.loads(args.files)))
    for ext, text in outputs.items():
        with atomic_path(f"{args.prefix}.{ext}") as tmp:
            tmp.write_text(text)
    print(outputs["md"])


if __name__ == "__main__":
    run_cli(main)
