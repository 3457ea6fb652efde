"""FastChat's MT-Bench pairwise protocol (workflow_scripts/mt_bench.py) against FastChat's own llm_judge code
(fschat 0.2.36, requirements-reference.txt) on the same questions, answers and judgments: the prompts and
verdicts of `run_judge_pair`, the matches of `play_a_match_pair`, the tally of `show_result.py`; and the
multi-turn answers a judged answer set holds."""
import hashlib
import json
import sys
import types

import pytest

from loopback_api import ChatEndpoint
from workflow_scripts import generate, head2head, mt_bench

sys.modules.setdefault("anthropic", types.ModuleType("anthropic"))  # FastChat imports it for Claude judges only
from fastchat.llm_judge import common as fastchat  # noqa: E402
from fastchat.llm_judge import show_result  # noqa: E402

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a travel blog post.", "Rewrite it, each sentence with A."]},
    {"question_id": 111, "category": "math", "turns": ["Area of the triangle (0,0), (-1,1), (3,3)?",
                                                       "Area of its circumscribed circle?"],
     "references": ["3", "5 pi"]},
    {"question_id": 121, "category": "coding", "turns": ["Write a Python function for the top-5 words."],
     "references": ["def top5(): ..."]},
    {"question_id": 141, "category": "stem", "turns": ["What is superposition?", "Is that a fair assumption?"]},
]
ANSWERS = {"model_1": {81: ["Aloha!", "A trip."], 111: ["2", "4 pi"], 121: ["def f(): pass"], 141: ["Waves.", "Yes."]},
           "model_2": {81: ["Hawaii is nice.", "Always."], 111: ["3", "5 pi"], 121: ["import re"], 141: ["States.", "No."]}}
SCRIPTS = [["My verdict: [[A]]", "[[B]]", "It is a tie: [[C]]", "no verdict given", "[[B]] then [[A]]", "[A]"],
           ["[[A]]", "[[B]]", "[[C]]", "[[A]]"], ["[[A]]", "[[A]]", "[[B]]", "nothing"]]


def scripted_judgment(user_prompt: str, script: list[str]) -> str:
    """A judgment that depends on the prompt only, so both implementations get the same one."""
    return script[int(hashlib.sha256(user_prompt.encode()).hexdigest(), 16) % len(script)]


def fastchat_answer(model: str, qid: int) -> dict:
    return {"choices": [{"turns": ANSWERS[model][qid]}]}


@pytest.fixture
def fastchat_judge(monkeypatch):
    """FastChat's gpt-4 judge with its API call replaced by a scripted judgment (the script can be replaced
    in place); records the messages."""
    sent, script = [], list(SCRIPTS[0])

    def completion(model, conv, temperature, max_tokens, api_dict=None):
        messages = conv.to_openai_api_messages()
        sent.append(messages)
        assert (temperature, max_tokens) == (0, 2048)
        return scripted_judgment(messages[-1]["content"], script)

    monkeypatch.setattr(fastchat, "chat_completion_openai", completion)
    prompts = fastchat.load_judge_prompts(str(mt_bench.PROMPTS_FILE))
    return sent, script, {"default": fastchat.Judge("gpt-4", prompts["pair-v2"]),
                  "math": fastchat.Judge("gpt-4", prompts["pair-math-v1"], ref_based=True),
                  "default-mt": fastchat.Judge("gpt-4", prompts["pair-v2-multi-turn"], multi_turn=True),
                  "math-mt": fastchat.Judge("gpt-4", prompts["pair-math-v1-multi-turn"], ref_based=True,
                                            multi_turn=True)}


def fastchat_matches(judges) -> list[dict]:
    """gen_judgment.py --mode pairwise-all's matches of model_1 and model_2, played by FastChat."""
    out = []
    for multi_turn in (False, True):
        for q in QUESTIONS:
            if multi_turn and len(q["turns"]) != 2:
                continue
            ref = q["category"] in fastchat.NEED_REF_CATS
            judge = judges[("math" if ref else "default") + ("-mt" if multi_turn else "")]
            ref_answer = {"choices": [{"turns": q["references"]}]} if ref else None
            match = fastchat.MatchPair(dict(q), "model_1", "model_2", fastchat_answer("model_1", q["question_id"]),
                                       fastchat_answer("model_2", q["question_id"]), judge, ref_answer=ref_answer,
                                       multi_turn=multi_turn)
            out.append(fastchat.play_a_match_pair(match, output_file=None))
    return out


def our_items() -> list[dict]:
    return [{"id": q["question_id"], "question": {k: q.get(k) for k in ("turns", "category", "references")},
             "model_1": ANSWERS["model_1"][q["question_id"]], "model_2": ANSWERS["model_2"][q["question_id"]]}
            for q in QUESTIONS]


def test_prompts_and_verdicts_are_fastchats(fastchat_judge):
    sent, script, judges = fastchat_judge
    theirs = {(m["question_id"], m["turn"]): m for m in fastchat_matches(judges)}
    ours_sent = []

    def complete(conversations):
        ours_sent.extend(conversations)
        return [scripted_judgment(user, script) for _, user in conversations]

    ours = mt_bench.play(our_items(), complete)
    assert len(ours) == len(theirs) == 7  # 4 first turns, 3 second turns
    assert sorted(ours_sent) == sorted((m[0]["content"], m[1]["content"]) for m in sent)
    for m in ours:
        t = theirs[(m["question_id"], m["turn"])]
        assert (m["g1_winner"], m["g2_winner"]) == (t["g1_winner"], t["g2_winner"])
        assert m["g1_user_prompt"] == t["g1_user_prompt"]
    assert {m["g1_winner"] for m in ours} | {m["g2_winner"] for m in ours} >= {"model_1", "model_2", "error"}


def fastchat_table(path) -> dict:
    """show_result.py --mode pairwise-all on a judgment file: the row of model_1."""
    printed = []
    args = types.SimpleNamespace(input_file=str(path), bench_name="mt_bench", judge_model="gpt-4",
                                 baseline_model=None, model_list=None)
    show_result.print = printed.append
    try:
        show_result.display_result_pairwise(args)
    finally:
        del show_result.print
    return printed[-1].loc["model_1"].to_dict()


@pytest.mark.parametrize("script", range(len(SCRIPTS)))
def test_tally_is_show_results(fastchat_judge, tmp_path, script):
    """Win / loss / tie counts and rates of model_1 equal FastChat's table for several verdict scripts."""
    _, verdicts, judges = fastchat_judge
    verdicts[:] = SCRIPTS[script]
    path = tmp_path / "gpt-4_pair.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in fastchat_matches(judges)))
    ours = mt_bench.tally(mt_bench.play(our_items(), lambda c: [scripted_judgment(u, verdicts) for _, u in c]))
    theirs = fastchat_table(path)
    for key in ("win", "loss", "tie"):
        assert ours[key] == theirs[key], key
    for key in ("win_rate", "loss_rate", "win_rate_adjusted"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    assert ours["n_judged"] + ours["judge_failures"] == ours["n_total"] == 7


def test_a_graded_question_without_its_references_gets_the_general_prompt():
    q = {"turns": ["2+2?", "And 3+3?"], "category": "coding", "references": ["4"]}
    assert [mt_bench.prompt_name(q, t) for t in (1, 2)] == ["pair-math-v1", "pair-v2-multi-turn"]
    system, user = mt_bench.prompt_for(q, ["4", "6"], ["5", "7"], 2, mt_bench.judge_prompts())
    assert "Reference" not in user and "{" not in user


def test_nothing_judged_gives_no_rates():
    scores = mt_bench.tally([{"g1_winner": "error", "g2_winner": "model_1"}])
    assert (scores["win"], scores["win_rate"], scores["judge_failures"], scores["n_judged"]) == (0, None, 1, 0)


def test_multi_turn_answers_hold_the_models_own_earlier_answers(tiny_world, tmp_path):
    """Each follow-up is answered after the model's own first answer (FastChat's gen_model_answer), seeded
    per turn; a single-turn generation of that conversation gives the same second answer."""
    model, _ = tiny_world
    data = tmp_path / "mt.jsonl"
    records = [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
                "followups": ["And doubled?"], "category": "math" if i % 2 else "writing"} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    params = {"backend": "hf", "dtype": "float32", "batch_size": 4, "shard_size": 4, "max_model_len": None,
              "gpu_memory_utilization": 0.9, "attn_implementation": None, "over_long_prompts": "truncate",
              "system_prompt": None, "prompt_format": None, "temperature": 1.0,
              "top_p": 1.0, "top_k": 0, "max_new_tokens": 12, "stop": [], "limit": None,
              "category_temperature": {"math": 0.0}}
    out = tmp_path / "answers.jsonl"
    generate.main(["--params", json.dumps(params), "--data", str(data), "--model", model, "--seed", "0",
                   "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(r["turns"]) == 2 and r["text"] == r["turns"][0] and len(r["finish_reasons"]) == 2 for r in rows)
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({"id": f"{r['id']}#turn2", "chosen": "-", "category": r["category"],
                                          "prompt": [*r["prompt"], {"role": "assistant", "content": a["turns"][0]},
                                                     {"role": "user", "content": "And doubled?"}]}) + "\n"
                              for r, a in zip(records, rows)))
    replay = tmp_path / "replay.jsonl"
    generate.main(["--params", json.dumps(params), "--data", str(second), "--model", model, "--seed", "0",
                   "--output", str(replay)])
    assert [json.loads(line)["text"] for line in replay.read_text().splitlines()] == [r["turns"][1] for r in rows]
    greedy = [r for r, rec in zip(rows, records) if rec["category"] == "math"]
    again = tmp_path / "again.jsonl"
    generate.main(["--params", json.dumps(params), "--data", str(data), "--model", model, "--seed", "1",
                   "--output", str(again)])
    other_seed = {json.loads(line)["id"]: json.loads(line)["turns"] for line in again.read_text().splitlines()}
    assert all(other_seed[r["id"]] == r["turns"] for r in greedy)  # category temperature 0: greedy, seed-free
    assert any(other_seed[r["id"]] != r["turns"] for r in rows if r not in greedy)  # the others sample


def blocks(prompt: str) -> tuple[str, str]:
    """Assistant A's and B's parts of a FastChat judge prompt (one answer, or a whole conversation)."""
    a = prompt.split("Start of Assistant A", 1)[1].split("Start of Assistant B", 1)[0]
    return a, prompt.split("Start of Assistant B", 1)[1]


def good_answer_judge(body):
    """A judge "model" preferring the assistant whose answers say GOOD; neither: no verdict; FAIL: a server error."""
    system, user = (m["content"] for m in body["messages"])
    assert system.startswith("Please act as an impartial judge")
    if "FAIL" in user:
        return None, None
    a, b = ("GOOD" in x for x in blocks(user))
    return {(True, False): "[[A]]", (False, True): "Assistant B is better. [[B]]", (True, True): "[[C]]"}.get(
        (a, b), "I cannot decide."), None


def test_served_fastchat_judge_end_to_end(tmp_path, monkeypatch):
    """head2head with the fastchat judge via an OpenAI-compatible endpoint: both orders of every turn, the key
    from the environment only, wins / losses / ties / failures as FastChat counts them."""
    endpoint = ChatEndpoint(good_answer_judge)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    cases = [("writing", ["GOOD", "GOOD"], ["bad", "bad"]), ("math", ["bad", "bad"], ["GOOD", "bad"]),
             ("stem", ["GOOD", "GOOD"], ["GOOD", "GOOD"]), ("writing", ["bad", "bad"], ["bad", "bad"]),
             ("writing", ["GOOD"], ["bad"])]
    questions = [{"id": f"q{i}", "prompt": [{"role": "user", "content": "FAIL" if i == 4 else f"Question {i}?"}],
                  "followups": ["Follow-up?"] * (len(model) - 1), "category": category,
                  "references": ["ref 1", "ref 2"]} for i, (category, model, _) in enumerate(cases)]
    files = {name: tmp_path / f"{name}.jsonl" for name in ("data", "model", "base")}
    files["data"].write_text("".join(json.dumps(q) + "\n" for q in questions))
    for k, name in ((1, "model"), (2, "base")):
        files[name].write_text("".join(json.dumps({"id": f"q{i}", "seed": 0, "text": c[k][0], "turns": c[k]}) + "\n"
                                       for i, c in enumerate(cases)))
    params = {"kind": "pairwise", "answer_set": "mt", "reference": "dataset", "difficulty_file": None, "seed": 0,
              "judge": {"kind": "fastchat", "via": "api", "model": "judge-70b", "base_url": endpoint.url,
                        "max_new_tokens": 2048, "max_retries": 0}}
    out = tmp_path / "mt.json"
    head2head.main(["--params", json.dumps(params), "--data", str(files["data"]), "--answers", str(files["model"]),
                    "--reference-answers", str(files["base"]), "--reference-name", "base", "--model", "dpo",
                    "--output", str(out)])
    scores = json.loads(out.read_text())["scores"]["pairwise"]
    assert {k: scores[k] for k in ("win", "loss", "tie", "n_judged", "judge_failures", "n_total")} == {
        "win": 2, "loss": 2, "tie": 2, "n_judged": 6, "judge_failures": 3, "n_total": 9}
    assert (scores["win_rate"], scores["win_rate_adjusted"]) == (pytest.approx(2 / 6), pytest.approx(0.5))
    assert len(endpoint.requests) == 18  # 9 matches, both orders
    assert {(r["body"]["model"], r["body"]["temperature"], r["body"]["max_tokens"]) for r in endpoint.requests} == {
        ("judge-70b", 0, 2048)}
    assert {r["auth"] for r in endpoint.requests} == {"Bearer sk-test-key"}
    math_prompts = [r["body"]["messages"][1]["content"] for r in endpoint.requests if "Question 1?" in str(r["body"])]
    assert all("ref 1" in p for p in math_prompts) and any("ref 2" in p for p in math_prompts)
    assert "sk-test-key" not in out.read_text() + (tmp_path / "mt.samples.jsonl").read_text()
