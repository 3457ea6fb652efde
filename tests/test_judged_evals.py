"""The math eval and the judged head-to-head evals (AlpacaEval protocol, pairwise against the starting model)."""
import json
import random

import numpy as np
import pytest

from loopback_api import ChatEndpoint
from workflow_scripts import head2head, judges, math_eval
from workflow_scripts.io import InputError

QUESTIONS = [("What is 2 + 3?", "5"), ("Half of 7?", "\\frac{7}{2}"), ("1,000 + 234?", "1234"), ("x if 2x = 6?", "3")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def split(tmp_path):
    return write_jsonl(tmp_path / "eval.jsonl", [
        {"id": f"q{i}", "prompt": [{"role": "user", "content": q}], "chosen": f"The answer is {a}.", "answer": a}
        for i, (q, a) in enumerate(QUESTIONS)])


def answers(tmp_path, name, texts):
    return write_jsonl(tmp_path / f"{name}.jsonl", [{"id": f"q{i}", "seed": 0, "text": t, "finish_reason": "stop"}
                                                     for i, t in enumerate(texts)])


MODEL_TEXTS = ["2 + 3 = 5\n#### 5", "So the result is \\boxed{\\dfrac{7}{2}}.", "The total is 1,234 apples.",
               "I do not know."]
BASE_TEXTS = ["2 + 3 = 6\n#### 6", "The answer is 4", "1234", "x = 3, so the answer is 3"]


def test_math_eval_scores_and_keeps_every_prediction(tmp_path, split):
    out = tmp_path / "eval/sft/math.json"
    settings = {"temperature": 0.0, "max_new_tokens": 512, "backend": "hf", "prompt_format": None}
    math_eval.main(["--tasks", json.dumps([{"name": "synth", "data": split, "answers": answers(tmp_path, "m", MODEL_TEXTS),
                                            "settings": settings}]), "--model", "sft", "--output", str(out)])
    result = json.loads(out.read_text())
    score = result["scores"]["synth"]
    # 5, 7/2 (\dfrac, boxed) and 1234 (comma) are right; "I do not know." has no answer
    assert score["accuracy"] == 0.75 and score["answered"] == 0.75 and score["n"] == 4
    assert score["stderr"]["accuracy"] == pytest.approx((0.75 * 0.25 / 3) ** 0.5)
    assert "greedy, at most 512 new tokens, chat template" in result["protocol"]["summary"]
    samples = [json.loads(line) for line in (tmp_path / "eval/sft/math.samples.jsonl").read_text().splitlines()]
    assert [(s["extracted"], s["correct"]) for s in samples] == [
        ("5", True), ("\\dfrac{7}{2}", True), ("1234", True), (None, False)]


def test_math_eval_refuses_answers_it_cannot_check(tmp_path, split):
    stray = write_jsonl(tmp_path / "stray.jsonl", [{"id": "q9", "text": "5"}])
    with pytest.raises(InputError, match=r"stray.jsonl, line 1, field 'id': id 'q9' is not in"):
        math_eval.read_answered(split, stray)
    no_answer = write_jsonl(tmp_path / "noanswer.jsonl", [{"id": "q0", "prompt": [{"role": "user", "content": "?"}],
                                                            "chosen": "5"}])
    with pytest.raises(InputError, match=r"noanswer.jsonl, line 1, field 'answer'"):
        math_eval.read_answered(no_answer, answers(tmp_path, "m", MODEL_TEXTS[:1]))


def run_head2head(tmp_path, split, kind, model_answers, reference=None, difficulty=None):
    out = tmp_path / f"{kind}.json"
    params = {"kind": kind, "answer_set": "synth", "reference": "dataset", "difficulty_file": difficulty, "seed": 0,
              "judge": {"kind": "answer_check"}}
    head2head.main(["--params", json.dumps(params), "--data", split, "--answers", model_answers,
                    *(["--reference-answers", reference] if reference else []), "--reference-name", "ref",
                    "--model", "sft", "--output", str(out)])
    return json.loads(out.read_text())


def test_alpaca_eval_win_rate_from_alpaca_eval_metrics(tmp_path, split):
    """Against the split's reference answers (all right): 3 draws (model right) and 1 loss -> 37.5%."""
    result = run_head2head(tmp_path, split, "alpaca_eval", answers(tmp_path, "m", MODEL_TEXTS))
    s = result["scores"]["alpaca_eval"]
    assert (s["win_rate"], s["n_wins"], s["n_wins_base"], s["n_draws"], s["n_total"]) == (37.5, 0, 1, 3, 4)
    assert s["avg_length"] == pytest.approx(sum(map(len, MODEL_TEXTS)) / 4)
    assert "length_controlled_winrate" not in s
    assert result["protocol"]["summary"].startswith("judge: answer check (offline, deterministic)")


def test_pairwise_against_the_starting_model(tmp_path, split):
    """Model right / base wrong on q0, q1 (wins); both right on q2 (tie); base right only on q3 (loss)."""
    result = run_head2head(tmp_path, split, "pairwise", answers(tmp_path, "m", MODEL_TEXTS),
                           reference=answers(tmp_path, "base", BASE_TEXTS))
    s = result["scores"]["pairwise"]
    assert (s["win"], s["tie"], s["loss"], s["adjusted_win_rate"], s["n_total"]) == (50.0, 25.0, 25.0, 62.5, 4)
    # standard errors over the prompts: outcomes (1, 1, 0, 0) for win, (1, 1, .5, 0) for the adjusted win rate
    assert s["stderr"]["win"] == pytest.approx(100 * np.std([1, 1, 0, 0], ddof=1) / 2)
    assert s["stderr"]["adjusted_win_rate"] == pytest.approx(100 * np.std([1, 1, 0.5, 0], ddof=1) / 2)
    rows = [json.loads(line) for line in (tmp_path / "pairwise.samples.jsonl").read_text().splitlines()]
    assert [r["preference"] for r in rows] == [2.0, 2.0, 1.5, 1.0]
    # one protocol for every row of a table, whatever model each run started from
    assert "reference: each run's starting model" in result["protocol"]["summary"]
    assert result["protocol"]["reference"] == "ref"


def difficulty_file(path, n):
    """A df_gamed.csv in alpaca_eval's format: two length-gamed baselines per instruction."""
    import pandas as pd

    rng = random.Random(0)
    rows = []
    for model, sign in (("gamed_verbose", 1), ("gamed_concise", -1)):
        for i in range(n):
            delta = sign * abs(rng.gauss(1, 0.3))
            rows.append({"model": model, "index": i, "instruction_difficulty": rng.uniform(-1, 1),
                         "preference": min(max(0.5 + 0.3 * delta + rng.uniform(-0.1, 0.1), 0), 1),
                         "std_delta_len": delta, "not_gamed_baseline": False})
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_length_controlled_win_rate_from_a_local_difficulty_file(tmp_path, monkeypatch):
    """alpaca_eval's GLM runs on the configured file; it never reaches for the hub."""
    from alpaca_eval.metrics import glm_winrate

    def no_download(**kwargs):
        raise AssertionError(f"download attempted: {kwargs}")

    monkeypatch.setattr(glm_winrate, "hf_hub_download", no_download)
    rng = random.Random(1)
    n = 60
    records, model, ref = [], [], []
    for i in range(n):
        a = str(rng.randint(1, 50))
        records.append({"id": f"q{i}", "prompt": [{"role": "user", "content": f"q{i}"}],
                        "chosen": f"#### {a}", "answer": a})
        right = rng.random() < 0.5
        # long answers are right more often: the raw win rate rewards length, the LC one discounts it
        model.append({"id": f"q{i}", "text": ("Let me explain at length. " * (6 if right else 1)) +
                      f"#### {a if right else int(a) + 1}"})
        ref.append({"id": f"q{i}", "text": f"#### {a if rng.random() < 0.5 else int(a) + 2}"})
    split = write_jsonl(tmp_path / "split.jsonl", records)
    result = run_head2head(tmp_path, split, "alpaca_eval", write_jsonl(tmp_path / "m.jsonl", model),
                           reference=write_jsonl(tmp_path / "r.jsonl", ref),
                           difficulty=difficulty_file(tmp_path / "df_gamed.csv", n))
    s = result["scores"]["alpaca_eval"]
    assert 0 < s["length_controlled_winrate"] < 100 and s["lc_standard_error"] > 0
    assert s["length_controlled_winrate"] != s["win_rate"]
    (tmp_path / "again").mkdir()
    again = run_head2head(tmp_path / "again", split, "alpaca_eval", write_jsonl(tmp_path / "m.jsonl", model),
                          reference=write_jsonl(tmp_path / "r.jsonl", ref),
                          difficulty=difficulty_file(tmp_path / "df_gamed.csv", n))
    assert again["scores"] == result["scores"]


def test_missing_difficulty_file_is_named_before_any_judging(tmp_path, split):
    with pytest.raises(InputError, match=r"nowhere/df_gamed.csv, field 'difficulty_file': not found"):
        run_head2head(tmp_path, split, "alpaca_eval", answers(tmp_path, "m", MODEL_TEXTS),
                      difficulty=str(tmp_path / "nowhere/df_gamed.csv"))
    assert not (tmp_path / "alpaca_eval.json").exists()


def test_head2head_needs_a_reference_for_every_answer(tmp_path, split):
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"id": "q0", "text": "5"}])
    with pytest.raises(InputError, match="partial.jsonl, field 'id': no reference response for id 'q1'"):
        head2head.head2head_items(split, answers(tmp_path, "m", MODEL_TEXTS), partial)


class FlippingBackend:
    """Answers 'm' (first output better) whatever the order: position bias, which must end as a draw."""

    def generate(self, requests):
        from workflow_scripts.backends import Completion

        return [Completion(" m", "stop", None) for _ in requests]


def test_local_judge_on_a_real_model_and_its_position_bias_rule(tiny_world, tmp_path):
    spec = {"kind": "local", "model": "judge", "annotator": "weighted_alpaca_eval_gpt4_turbo", "backend": "hf",
            "dtype": "float32", "batch_size": 4, "max_model_len": None, "gpu_memory_utilization": 0.9,
            "attn_implementation": None, "over_long_prompts": "truncate"}
    judge = judges.load_judge(spec, 0, judges.JudgeModel(tiny_world[0]))
    items = [{"id": "q0", "instruction": "What is 2 + 3?", "output_1": "5", "output_2": "6", "truth": "5"},
             {"id": "q1", "instruction": "Half of 7?", "output_1": "3", "output_2": "3.5", "truth": "3.5"}]
    judged = judge.judge(items)  # the random tiny model answers neither 'm' nor 'M': unparsed, a draw
    assert [j["preference"] for j in judged] == [1.5, 1.5] and len(judged[0]["judge_outputs"]) == 2
    prompt = "".join(m["content"] for m in judge._messages("What is 2 + 3?", "five", "six"))
    assert "What is 2 + 3?" in prompt and prompt.index("five") < prompt.index("six")
    judge.chat.backend = FlippingBackend()
    assert [j["preference"] for j in judge.judge(items)] == [1.5, 1.5]
    assert judge._verdict("M") == 2.0 and judge._verdict(" m\n") == 1.0 and judge._verdict("maybe") is None


def test_unknown_annotator_is_named():
    with pytest.raises(ValueError, match="unknown alpaca_eval annotator 'gpt5_magic'"):
        judges.annotator_config("gpt5_magic")


def alpaca_judge(truths):
    """A judge "model" that prefers the output holding `#### <truth>`, answering alpaca_eval's weighted template
    with logprobs: alpaca_eval's own client, template and parser run against it unchanged."""
    def answer(body):
        prompt = body["messages"][-1]["content"]
        question = prompt.split('"instruction": """', 1)[1].split('"""', 1)[0]
        first = prompt.split('"output": """', 2)[1].split('"""', 1)[0]
        best = "m" if f"#### {truths[question]}" in first else "M"
        top = [{"token": t, "bytes": list(t.encode()), "logprob": lp}
               for t, lp in ((best, -0.05), ("m" if best == "M" else "M", -3.0))]
        return best, {"content": [{**top[0], "top_logprobs": top}]}

    return answer


def test_annotator_judge_runs_alpaca_eval_against_an_openai_compatible_endpoint(tmp_path, split, monkeypatch):
    """weighted_alpaca_eval_gpt4_turbo through alpaca_eval's client: the served model's name replaces the config's,
    the key comes from the environment only, alpaca_eval's random order is undone: the right answer wins."""
    truths = {q: a for q, a in QUESTIONS}
    endpoint = ChatEndpoint(alpaca_judge(truths))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    model = answers(tmp_path, "m", [f"#### {a}" if i % 2 else "#### 0" for i, (_, a) in enumerate(QUESTIONS)])
    ref = answers(tmp_path, "r", [f"#### {a}" if i % 2 == 0 else "#### 0" for i, (_, a) in enumerate(QUESTIONS)])
    out = tmp_path / "ann.json"
    params = {"kind": "pairwise", "answer_set": "synth", "reference": "dataset", "difficulty_file": None, "seed": 0,
              "judge": {"kind": "annotator", "annotator": "weighted_alpaca_eval_gpt4_turbo", "model": "judge-7b",
                        "base_url": endpoint.url}}
    head2head.main(["--params", json.dumps(params), "--data", split, "--answers", model, "--reference-answers", ref,
                    "--reference-name", "base", "--model", "dpo", "--output", str(out)])
    rows = [json.loads(line) for line in (tmp_path / "ann.samples.jsonl").read_text().splitlines()]
    # the model is right on q1, q3 and wins there; the reference on q0, q2 (weighted: p = e^-0.05 / (e^-0.05 + e^-3))
    p = 1 / (1 + 2.718281828459045 ** -2.95)
    assert [round(r["preference"], 6) for r in rows] == [round(x, 6) for x in (2 - p, 1 + p, 2 - p, 1 + p)]
    assert json.loads(out.read_text())["scores"]["pairwise"]["win"] == 50.0
    assert len(endpoint.requests) == 4
    assert {r["body"]["model"] for r in endpoint.requests} == {"judge-7b"}
    assert {r["auth"] for r in endpoint.requests} == {"Bearer sk-test-key"}
    assert "sk-test-key" not in out.read_text() + (tmp_path / "ann.samples.jsonl").read_text()


def test_math_eval_averages_several_samples_per_problem(tmp_path, split):
    """mean@k: problem accuracies averaged over their samples, then over problems; the standard error
    is over problems."""
    rows = [{"id": f"q{i}", "seed": s, "text": text}
            for i, texts in enumerate([("#### 5", "#### 4"), ("\\boxed{3.5}", "\\boxed{7/2}"), ("1234", "1234"),
                                       ("no", "3")]) for s, text in enumerate(texts)]
    out = tmp_path / "mean.json"
    math_eval.main(["--tasks", json.dumps([{"name": "synth", "data": split, "answers": write_jsonl(tmp_path / "k.jsonl", rows),
                                            "settings": {"temperature": 1.0, "samples": 2, "max_new_tokens": 64,
                                                         "backend": "hf", "prompt_format": None}}]),
                    "--model", "m", "--output", str(out)])
    result = json.loads(out.read_text())
    s = result["scores"]["synth"]
    assert (s["accuracy"], s["answered"], s["n"], s["samples_per_problem"]) == (0.75, 0.875, 4, 2.0)
    assert s["stderr"]["accuracy"] == pytest.approx((
        (sum((x - 0.75) ** 2 for x in (0.5, 1, 1, 0.5)) / 3) ** 0.5 / 2))
    assert "mean over 2 samples per problem" in result["protocol"]["summary"]


def test_math_protocol_describes_answer_sets_generated_differently():
    greedy = {"temperature": 0.0, "max_new_tokens": 512, "backend": "vllm", "prompt_format": "{prompt}"}
    one = math_eval.protocol("m", {"gsm8k": greedy, "math": greedy})["summary"]
    assert one.startswith("answers greedy, at most 512 new tokens, raw prompt format, vllm backend; ToRA")
    two = math_eval.protocol("m", {"gsm8k": greedy, "math": dict(greedy, max_new_tokens=2048)})["summary"]
    assert two.startswith("gsm8k: answers greedy, at most 512 new tokens, raw prompt format, vllm backend; "
                          "math: answers greedy, at most 2048 new tokens")
