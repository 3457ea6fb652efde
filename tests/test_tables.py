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

EXPECTED_TEX = r"""\begin{table}[t]
\centering
\caption{Synthetic GSM8K.}
\label{tab:main}
\begin{tabular}{lccc}
\toprule
Method & GSM\_EM & MC & Avg \\
\midrule
base & 10.0 & 25.0 & 17.5 \\
sft & \textbf{50.0} & 40.0 & 45.0 \\
dft & 45.0 $\pm$ 7.1 & \textbf{60.0 $\pm$ 0.0} & \textbf{52.5 $\pm$ 3.5} \\
\bottomrule
\end{tabular}
\end{table}
"""


def eval_file(tmp_path, name, gen, mc):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"scores": {"gen": {"exact_match": gen, "stderr": 0.01}, "mc": {"acc": mc}}}))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {"base": [eval_file(tmp_path, "base", 0.1, 0.25)], "sft": [eval_file(tmp_path, "sft", 0.5, 0.4)],
            "dft": [eval_file(tmp_path, "dft1", 0.4, 0.6), eval_file(tmp_path, "dft2", 0.5, 0.6)]}


def test_tex_matches_expected_text(files):
    out = tables.render(TABLE, tables.collect(TABLE, files))
    assert out["tex"] == EXPECTED_TEX


def test_markdown_and_csv(files):
    out = tables.render(TABLE, tables.collect(TABLE, files))
    assert "| sft | **50.0** | 40.0 | 45.0 |" in out["md"]
    assert out["csv"].splitlines()[0] == "method,GSM_EM,GSM_EM_std,GSM_EM_n,MC,MC_std,MC_n,Avg,Avg_std,Avg_n"
    assert out["csv"].splitlines()[3].startswith("dft,45.000000,7.071068,2,60.000000,0.000000,2,52.500000")


def test_missing_score_is_an_error_naming_the_file(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scores": {"gen": {"exact_match": 0.1}}}))
    files["sft"] = [str(bad)]
    with pytest.raises(InputError, match=r"bad.json, field 'scores.mc': no score for task 'mc' metric 'acc'"):
        tables.collect(TABLE, files)
