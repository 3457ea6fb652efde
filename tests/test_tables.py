"""Tables rebuilt from fixed eval JSON files, compared with the expected text."""
import json

import pytest

from workflow_scripts import tables
from workflow_scripts.io import InputError

TABLE = {
    "name": "main", "eval": "arith", "rows": ["base", "sft", "dft"], "scale": 100, "digits": 1, "average": True,
    "caption": "Synthetic GSM8K.",
    "columns": [{"label": "GSM_EM", "task": "gen", "metric": "exact_match"},
                {"label": "MC", "task": "mc", "metric": "acc"}],
}
PROTOCOL = "lm-eval-harness 0.4.13 (hf, float32); gen 0-shot, mc 0-shot; chat template on; batch size 64; seed 0"

EXPECTED_TEX = r"""\begin{table}[t]
\centering
\caption{Synthetic GSM8K. $\pm$: the standard deviation over training seeds for rows with several seeds, else the evaluation's standard error over its prompts. Protocol: lm-eval-harness 0.4.13 (hf, float32); gen 0-shot, mc 0-shot; chat template on; batch size 64; seed 0.}
\label{tab:main}
\begin{tabular}{lccc}
\toprule
Method & GSM\_EM & MC & Avg \\
\midrule
base & 10.0 $\pm$ 1.0 & 25.0 & 17.5 \\
sft & \textbf{50.0 $\pm$ 1.0} & 40.0 & 45.0 \\
dft & 45.0 $\pm$ 7.1 & \textbf{60.0 $\pm$ 0.0} & \textbf{52.5 $\pm$ 3.5} \\
\bottomrule
\end{tabular}
\end{table}
"""


def eval_file(tmp_path, name, gen, mc, protocol=PROTOCOL):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"scores": {"gen": {"exact_match": gen, "stderr": {"exact_match": 0.01}},
                                           "mc": {"acc": mc}}, "protocol": {"summary": protocol}}))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {"base": {"arith": [eval_file(tmp_path, "base", 0.1, 0.25)]},
            "sft": {"arith": [eval_file(tmp_path, "sft", 0.5, 0.4)]},
            "dft": {"arith": [eval_file(tmp_path, "dft1", 0.4, 0.6), eval_file(tmp_path, "dft2", 0.5, 0.6)]}}


def test_tex_matches_expected_text(files):
    out = tables.render(TABLE, *tables.collect(TABLE, files))
    assert out["tex"] == EXPECTED_TEX


def test_markdown_and_csv(files):
    out = tables.render(TABLE, *tables.collect(TABLE, files))
    assert "| sft | **50.0 ± 1.0** | 40.0 | 45.0 |" in out["md"]
    assert out["csv"].splitlines()[0] == ("method,GSM_EM,GSM_EM_std,GSM_EM_stderr,GSM_EM_n,MC,MC_std,MC_stderr,MC_n,"
                                          "Avg,Avg_std,Avg_stderr,Avg_n")
    assert out["csv"].splitlines()[1] == "base,10.000000,,1.000000,1,25.000000,,,1,17.500000,,,1"
    assert out["csv"].splitlines()[3].startswith("dft,45.000000,7.071068,,2,60.000000,0.000000,,2,52.500000")


def test_missing_score_is_an_error_naming_the_file(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scores": {"gen": {"exact_match": 0.1}}, "protocol": {"summary": PROTOCOL}}))
    files["sft"] = {"arith": [str(bad)]}
    with pytest.raises(InputError, match=r"bad.json, field 'scores.mc': no score for task 'mc' metric 'acc'"):
        tables.collect(TABLE, files)


PAIRWISE = {
    "name": "pairwise", "eval": "pw", "rows": ["dpo", "kto"], "scale": 100, "digits": 1, "average": False,
    "caption": "Runs against their starting model (%).",
    "columns": [{"label": "Win", "task": "pairwise", "metric": "win", "scale": 1},
                {"label": "Loss", "task": "pairwise", "metric": "loss", "scale": 1, "best": "min"},
                {"label": "n", "task": "pairwise", "metric": "n_total", "scale": 1, "digits": 0, "best": "none"},
                {"label": "Math", "eval": "math", "task": "gsm8k", "metric": "accuracy"}],
}

EXPECTED_PAIRWISE_TEX = r"""\begin{table}[t]
\centering
\caption{Runs against their starting model (\%). Protocol: pw: judge: answer check; reference: tiny/base; math: answers greedy.}
\label{tab:pairwise}
\begin{tabular}{lcccc}
\toprule
Method & Win & Loss ($\downarrow$) & n & Math \\
\midrule
dpo & \textbf{30.0} & 20.0 & 200 & \textbf{50.0} \\
kto & 25.0 & \textbf{10.0} & 200 & 40.0 \\
\bottomrule
\end{tabular}
\end{table}
"""


def test_judged_table_with_a_minimum_a_column_without_best_and_a_second_eval(tmp_path):
    """Counts keep their scale and bold nothing (best: none), a loss column bolds its minimum, a column reads
    another eval, the caption ends with each eval's protocol."""
    def write(name, scores, summary):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"scores": scores, "protocol": {"summary": summary}}))
        return [str(path)]

    files = {run: {"pw": write(f"{run}_pw", {"pairwise": {"win": win, "loss": loss, "n_total": 200}},
                                 "judge: answer check; reference: tiny/base"),
                   "math": write(f"{run}_math", {"gsm8k": {"accuracy": acc}}, "answers greedy")}
             for run, win, loss, acc in (("dpo", 30.0, 20.0, 0.5), ("kto", 25.0, 10.0, 0.4))}
    out = tables.render(PAIRWISE, *tables.collect(PAIRWISE, files))
    assert out["tex"] == EXPECTED_PAIRWISE_TEX
    assert out["md"].splitlines()[0] == "| Method | Win | Loss (↓) | n | Math |"


def test_rows_under_another_protocol_are_an_error(files, tmp_path):
    files["sft"] = {"arith": [eval_file(tmp_path, "sft_other", 0.5, 0.4, protocol=PROTOCOL.replace("0-shot", "5-shot"))]}
    with pytest.raises(InputError, match="sft_other.json, field 'protocol.summary': eval 'arith' was run under another "
                                         "protocol"):
        tables.collect(TABLE, files)


def test_an_undefined_value_is_shown_as_such_and_never_best(files, tmp_path):
    """A metric the eval recorded as null (a win rate with no judgement read) is n/a in every format, has no
    average, is not bolded, and the caption says what n/a means; a missing metric stays an error."""
    files["dft"] = {"arith": [eval_file(tmp_path, "dft_undefined", None, 0.9)]}
    out = tables.render(TABLE, *tables.collect(TABLE, files))
    assert "| dft | n/a | **90.0** | n/a |" in out["md"]
    assert "| sft | **50.0 ± 1.0** | 40.0 | **45.0** |" in out["md"]
    assert out["csv"].splitlines()[3] == "dft,,,,1,90.000000,,,1,,,,1"
    assert r"dft & n/a & \textbf{90.0} & n/a \\" in out["tex"] and "n/a: undefined for that row" in out["md"]
