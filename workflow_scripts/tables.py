"""Results tables from eval JSON: LaTeX (booktabs, best per column in bold), CSV and Markdown.

One row per entry of the table's `rows` (a run or a base model), in config order; a run with
several training seeds shows mean ± std over them, a single-seed row its value ± the standard error
the eval recorded for it (over the eval's prompts; none where the eval has none, e.g. the average of a
single-seed row), and the caption says so. A column reads one metric of one task of an eval
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


def score(result: dict, path: str, col: dict, scale: float) -> tuple[float | None, float | None]:
    """(value, standard error or None) of one column in one eval file's result, scaled; the value is None
    where the eval recorded the metric as undefined (null: e.g. a win rate with no judgement read)."""
    try:
        scores = result["scores"][col["task"]]
        value, se = scores[col["metric"]], (scores.get("stderr") or {}).get(col["metric"])
        value = None if value is None else float(value)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise InputError(path, f"no score for task '{col['task']}' metric '{col['metric']}' "
                         f"(table column '{col['label']}')", field=f"scores.{col['task']}") from None
    if value is None:
        return None, None
    return value * scale, None if se is None else float(se) * scale


def collect(table: dict, files: dict[str, dict[str, list[str]]]) -> tuple[list[dict], dict[str, str]]:
    """Per row: name and, per column label, the values over seeds and their standard errors (scaled);
    and each eval's protocol summary."""
    rows, summaries = [], {}
    for name in table["rows"]:
        values, stderrs = {}, {}
        for col in table["columns"]:
            ev, scale = column_eval(table, col), col.get("scale") or table["scale"]
            got = []
            for path in files[name][ev]:
                result = read_json(path)
                got.append(score(result, path, col, scale))
                summary = result.get("protocol", {}).get("summary")
                if summaries.setdefault(ev, summary) != summary:
                    raise InputError(path, f"eval '{ev}' was run under another protocol than the table's other rows: "
                                     f"{summary!r} vs {summaries[ev]!r}", field="protocol.summary")
            values[col["label"]], stderrs[col["label"]] = [v for v, _ in got], [se for _, se in got]
        if table["average"]:
            averaged = [values[c["label"]] for c in table["columns"] if c.get("average", True)]
            values["Avg"] = [None if None in v else statistics.fmean(v) for v in zip(*averaged)]
            stderrs["Avg"] = [None] * len(values["Avg"])
        rows.append({"name": name, "values": values, "stderr": stderrs})
    return rows, summaries


def summarise(vals: list[float | None], stderrs: list[float | None]) -> tuple[float | None, float | None, str | None]:
    """(mean, error, kind): the std over seeds for several, else the eval's standard error (kind 'std' / 'se');
    no mean where a seed's value is undefined."""
    if None in vals:
        return None, None, None
    if len(vals) > 1:
        return statistics.fmean(vals), statistics.stdev(vals), "std"
    return vals[0], stderrs[0], None if stderrs[0] is None else "se"


def error_note(rows: list[dict]) -> str:
    """The caption's sentence on what ± means, from the kinds of error the cells show."""
    kinds = {summarise(r["values"][lab], r["stderr"][lab])[2] for r in rows for lab in r["values"]} - {None}
    notes = {"std": "the standard deviation over training seeds", "se": "the evaluation's standard error over its prompts"}
    if not kinds:
        return ""
    if kinds == {"std", "se"}:
        return f" ±: {notes['std']} for rows with several seeds, else {notes['se']}."
    return f" ±: {notes[kinds.pop()]}."


def caption(table: dict, rows: list[dict], summaries: dict[str, str]) -> str:
    protocols = [f"{ev}: {s}" if len(summaries) > 1 else s for ev, s in summaries.items() if s]
    undefined = any(None in r["values"][lab] for r in rows for lab in r["values"])
    return (table["caption"].strip() + error_note(rows)
            + (" n/a: undefined for that row (the evaluation recorded no value, e.g. no judgement read)."
               if undefined else "")
            + (f" Protocol: {'; '.join(protocols)}." if protocols else ""))


def render(table: dict, rows: list[dict], summaries: dict[str, str] | None = None) -> dict[str, str]:
    columns = {c["label"]: c for c in table["columns"]}
    labels = list(rows[0]["values"])
    digits = {lab: (columns[lab].get("digits") if lab in columns else None) for lab in labels}
    digits = {lab: table["digits"] if d is None else d for lab, d in digits.items()}
    rule = {lab: columns[lab].get("best", "max") if lab in columns else "max" for lab in labels}
    means = {lab: [m for r in rows if (m := summarise(r["values"][lab], r["stderr"][lab])[0]) is not None]
             for lab in labels}
    best = {lab: {"max": max, "min": min}[rule[lab]](means[lab]) for lab in labels if rule[lab] != "none" and means[lab]}
    lower = {lab: rule[lab] == "min" for lab in labels}
    text = caption(table, rows, summaries or {})

    def cell(row, lab, bold_fmt):
        mean, error, _ = summarise(row["values"][lab], row["stderr"][lab])
        if mean is None:
            return "n/a"
        d = digits[lab]
        out = f"{mean:.{d}f}" + (f" ± {error:.{d}f}" if error is not None else "")
        return bold_fmt(out) if lab in best and round(mean, d) == round(best[lab], d) else out

    def tex_escape(s: str) -> str:
        return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&") \
            .replace("#", r"\#").replace("$", r"\$")

    tex_rows = [" & ".join([tex_escape(r["name"])] + [
        cell(r, lab, lambda t: rf"\textbf{{{t}}}").replace("±", r"$\pm$") for lab in labels]) + r" \\"
        for r in rows]
    tex_caption = tex_escape(text).replace("±", r"$\pm$")
    tex = "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_caption}}}", rf"\label{{tab:{table['name']}}}",
        r"\begin{tabular}{l" + "c" * len(labels) + "}", r"\toprule",
        " & ".join(["Method"] + [tex_escape(lab) + (r" ($\downarrow$)" if lower[lab] else "") for lab in labels])
        + r" \\", r"\midrule", *tex_rows, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])
    md = "\n".join([
        "| Method | " + " | ".join(lab + (" (↓)" if lower[lab] else "") for lab in labels) + " |",
        "|---" * (len(labels) + 1) + "|",
        *["| " + " | ".join([r["name"]] + [cell(r, lab, lambda t: f"**{t}**") for lab in labels]) + " |"
          for r in rows], "", text, ""])
    csv_lines = [",".join(["method"] + [f"{lab},{lab}_std,{lab}_stderr,{lab}_n" for lab in labels])]
    for r in rows:
        fields = [r["name"]]
        for lab in labels:
            mean, error, kind = summarise(r["values"][lab], r["stderr"][lab])
            fields += ["" if mean is None else f"{mean:.6f}"] + [f"{error:.6f}" if kind == k else "" for k in ("std", "se")]
            fields.append(str(len(r["values"][lab])))
        csv_lines.append(",".join(fields))
    return {"tex": tex, "md": md, "csv": "\n".join(csv_lines) + "\n"}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the table's config entry with 'name'")
    parser.add_argument("--files", required=True, help="a JSON file: row name -> eval name -> eval JSON files (one per seed)")
    parser.add_argument("--prefix", required=True, help="output path without extension")
    args = parser.parse_args(argv)
    table = json.loads(args.params)
    outputs = render(table, *collect(table, read_json(args.files)))
    for ext, text in outputs.items():
        with atomic_path(f"{args.prefix}.{ext}") as tmp:
            tmp.write_text(text)
    print(outputs["md"])


if __name__ == "__main__":
    run_cli(main)
