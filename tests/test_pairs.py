"""Step-controlled (SCDPO) and bridged (DPO-BMC) pairs."""
import json
import re
import sys

import pytest
from kill_resume import killed_and_resumed
from rapidfuzz.distance import Levenshtein

from workflow_scripts import bridge, step_controlled, synthetic_task
from workflow_scripts.answers import check
from workflow_scripts.io import InputError, read_jsonl
from workflow_scripts.shards import shard_folder


SC_PARAMS = {"backend": "hf", "dtype": "float32", "batch_size": 64, "shard_size": 4, "max_model_len": None,
             "gpu_memory_utilization": 0.9, "attn_implementation": None, "over_long_prompts": "truncate",
             "system_prompt": None, "prompt_format": None, "top_p": 1.0,
             "top_k": 0, "stop": [], "step_separator": "\n", "temperature": 1.1, "temperature_increment": 0.1,
             "max_temperature": 1.4, "max_new_tokens": 12, "max_steps": 4, "keep_unfinished": False, "limit": None}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def problems(n=12):
    return [{"id": f"arith-train-{p['index']}", "prompt": [{"role": "user", "content": p["question"]}],
             "chosen": p["answer"], "answer": p["answer"].rsplit("#### ", 1)[1]}
            for p in synthetic_task.make_splits(5, {"train": n}, 20)["train"]]


def test_rising_temperature_schedule():
    p = {"temperature": 1.1, "temperature_increment": 0.1, "max_temperature": 1.4}
    assert [round(step_controlled.step_temperature(p, i), 6) for i in range(6)] == [1.1, 1.2, 1.3, 1.4, 1.4, 1.4]


def test_steps_and_prefixes():
    steps = step_controlled.split_steps("6 + 11 = 17\n17 - 14 = 3\n#### 3", "\n")
    assert steps == ["6 + 11 = 17", "17 - 14 = 3", "#### 3"]
    assert step_controlled.prefix_of(steps, 0, "\n") == ""
    assert step_controlled.prefix_of(steps, 2, "\n") == "6 + 11 = 17\n17 - 14 = 3\n"


def continuation(id_, k, seed, text, finish="stop"):
    predicted, correct = check(text, "3")
    return {"id": id_, "k": k, "seed": seed, "text": text, "finish_reason": finish, "predicted": predicted,
            "correct": correct}


def test_pairs_keep_only_finished_wrong_continuations_in_seed_order(tmp_path):
    data = [{"id": "p", "prompt": [{"role": "user", "content": "q"}], "chosen": "6 + 11 = 17\n17 - 14 = 3\n#### 3",
             "answer": "3"}]
    seed10 = [continuation("p", 0, 10, "6 + 11 = 17\n17 - 14 = 4\n#### 4"), continuation("p", 1, 10, "17 - 14 = 3\n#### 3"),
              continuation("p", 2, 10, "#### 5")]
    seed2 = [continuation("p", 0, 2, "6 + 1 = 7\n#### 7"), continuation("p", 1, 2, "17 - 1 = 16\n", "length"),
             continuation("p", 2, 2, "#### 3")]
    pairs, counts = step_controlled.build_pairs(data, {10: write(tmp_path / "seed10.jsonl", seed10),
                                                       2: write(tmp_path / "seed2.jsonl", seed2)}, "\n")
    assert [(p["id"], p["prefix"], p["chosen"], p["negatives"]) for p in pairs] == [
        ("p-k0", "", "6 + 11 = 17\n17 - 14 = 3\n#### 3", ["6 + 1 = 7\n#### 7", "6 + 11 = 17\n17 - 14 = 4\n#### 4"]),
        ("p-k2", "6 + 11 = 17\n17 - 14 = 3\n", "#### 3", ["#### 5"]),
    ]
    assert counts["steps without a wrong continuation"] == 1
    pairs, _ = step_controlled.build_pairs(data, {10: str(tmp_path / "seed10.jsonl"), 2: str(tmp_path / "seed2.jsonl")},
                                           "\n", keep_unfinished=True)
    assert pairs[1]["negatives"] == ["17 - 1 = 16\n"]


def test_pairs_refuse_missing_duplicate_and_unknown_continuations(tmp_path):
    data = [{"id": "p", "prompt": [{"role": "user", "content": "q"}], "chosen": "1 + 2 = 3\n#### 3", "answer": "3"}]
    ok = [continuation("p", 0, 0, "#### 4"), continuation("p", 1, 0, "#### 4")]
    with pytest.raises(InputError, match=r"seed0.jsonl, field .id.: 1 \(id, k\) continuations are missing"):
        step_controlled.build_pairs(data, {0: write(tmp_path / "seed0.jsonl", ok[:1])}, "\n")
    with pytest.raises(InputError, match=r"line 2, field 'id': duplicate \(id 'p', k 0\)"):
        step_controlled.build_pairs(data, {0: write(tmp_path / "seed0.jsonl", [ok[0], ok[0]])}, "\n")
    with pytest.raises(InputError, match=r"line 3, field 'id': \(id 'p', k 5\) is not a step"):
        step_controlled.build_pairs(data, {0: write(tmp_path / "seed0.jsonl", ok + [continuation("p", 5, 0, "x")])},
                                    "\n")


def test_step_controlled_pairs_from_a_model_are_wrong_vs_correct(trained_tiny, tmp_path):
    """End to end with the HF backend: every rejected continuation has a wrong final answer, every
    chosen a correct one; the same seed reproduces the file across batch and shard sizes."""
    model = trained_tiny
    data = write(tmp_path / "data.jsonl", problems())
    files = []
    for seed in (0, 1):
        out = tmp_path / f"sc/seed{seed}.jsonl"
        step_controlled.main(["generate", "--params", json.dumps(SC_PARAMS), "--data", data, "--model", model,
                              "--seed", str(seed), "--output", str(out)])
        files.append(str(out))
    again = tmp_path / "again/seed1.jsonl"
    step_controlled.main(["generate", "--params", json.dumps({**SC_PARAMS, "batch_size": 7, "shard_size": 12}),
                          "--data", data, "--model", model, "--seed", "1", "--output", str(again)])
    assert again.read_bytes() == open(files[1], "rb").read()
    out = tmp_path / "pairs.jsonl"
    step_controlled.main(["pairs", "--params", json.dumps(SC_PARAMS), "--data", data, "--seed-files", *files,
                          "--output", str(out)])
    pairs = read_jsonl(out)
    assert len(pairs) > 5
    for p in pairs:
        assert check(p["prefix"] + p["chosen"], p["answer"])[1]
        for negative in p["negatives"]:
            assert not check(p["prefix"] + negative, p["answer"])[1]
        source = next(r for r in problems() if r["id"] == p["source_id"])
        assert p["prefix"] + p["chosen"] == source["chosen"] and p["id"] == f"{p['source_id']}-k{p['k']}"


def test_step_controlled_needs_answers(tiny_world, tmp_path):
    model, _ = tiny_world
    rows = problems(2)
    del rows[1]["answer"]
    data = write(tmp_path / "data.jsonl", rows)
    out = tmp_path / "seed0.jsonl"
    with pytest.raises(InputError, match=r"data.jsonl, line 2, field 'answer'"):
        step_controlled.main(["generate", "--params", json.dumps(SC_PARAMS), "--data", data, "--model", model,
                              "--seed", "0", "--output", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("losing, winning, repaired", [
    # wrong arithmetic fixed in place, the narrative line kept
    ("Tom has 3 pens.\n6 + 11 = 18\n#### 18", "6 + 11 = 17\n#### 17", "Tom has 3 pens.\n6 + 11 = 17\n#### 17"),
    # a missing second step inserted before the answer line
    ("6 + 11 = 17\n#### 17", "6 + 11 = 17\n17 - 14 = 3\n#### 3", "6 + 11 = 17\n17 - 14 = 3\n#### 3"),
    # no answer line: steps and answer appended; garbled and extra steps removed
    ("40\n5 = 15 = 30\n2 + 2\nLeo has 11 apples.", "19 - 4 = 15\n#### 15", "40\n19 - 4 = 15\nLeo has 11 apples.\n#### 15"),
    # a right step is kept as written (its spacing too)
    ("19  - 4 = 15\n#### 16", "19 - 4 = 15\n#### 15", "19  - 4 = 15\n#### 15"),
])
def test_synthetic_repair_is_a_minimal_edit(losing, winning, repaired):
    out = bridge.synthetic_repair(losing, winning)
    assert out == repaired
    assert check(out, winning.rsplit("#### ", 1)[1])[1]
    assert Levenshtein.distance(out, losing) <= Levenshtein.distance(winning, losing)


def test_bridged_pairs_are_closer_to_the_losing_response(tmp_path):
    """On synthetic problems with model-like wrong answers, pseudo-winning is nearer the losing
    response than the winning one is (the numbers go into the stats file)."""
    import random

    rng = random.Random(0)
    records = []
    for r in problems(40):
        lines = r["chosen"].split("\n")
        wrong = [f"{line.rsplit(' ', 1)[0]} {rng.randint(0, 40)}" if "=" in line else line for line in lines[:-1]]
        noise = [f"{rng.choice(synthetic_task.NAMES)} has {rng.randint(1, 9)} {rng.choice(synthetic_task.ITEMS)}."]
        records.append(dict(r, negatives=["\n".join(noise + wrong + [f"#### {rng.randint(0, 40)}"])]))
    source = write(tmp_path / "source.jsonl", records)
    out, stats = tmp_path / "bridge.jsonl", tmp_path / "bridge.stats.json"
    params = {"editor": "synthetic_repair", "shard_size": 16, "limit": None}
    bridge.main(["--params", json.dumps(params), "--source", source, "--output", str(out), "--stats", str(stats)])
    pairs, s = read_jsonl(out), json.loads(stats.read_text())
    assert s["pairs"] == len(pairs) == 40
    assert s["pseudo_winning_to_losing"] < s["winning_to_losing"]
    assert s["pseudo_winning_to_losing"] == sum(Levenshtein.distance(p["chosen"], p["negatives"][0]) for p in pairs) / 40
    assert s["winning_to_losing"] == sum(Levenshtein.distance(p["winning"], p["negatives"][0]) for p in pairs) / 40
    assert all(bridge.DISTANCES not in p for p in pairs)  # computed in the shards, not part of the pairs
    for p in pairs:
        assert check(p["chosen"], p["answer"])[1] and p["negatives"][0] != p["chosen"]


def test_model_editor_rewrites_with_the_template(tiny_world, tmp_path):
    """The editor model path: the tiny random model's rewrites become pseudo-winning responses
    (or are dropped when empty); reruns give the same file."""
    model, pairs_file = tiny_world
    params = {**SC_PARAMS, "editor": "tiny", "template": "Question: {prompt}\nGood: {winning}\nFix: {losing}",
              "seed": 0, "temperature": 0.0, "max_new_tokens": 16, "limit": 8, "stop": []}
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        bridge.main(["--params", json.dumps(params), "--source", pairs_file, "--editor", model, "--output", str(out),
                     "--stats", str(tmp_path / f"{name}.stats.json")])
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    stats = json.loads((tmp_path / "a.stats.json").read_text())
    assert stats["records"] == 8 and stats["pairs"] + stats["dropped_empty_rewrites"] == 8
    messages = bridge.editor_messages(params["template"], read_jsonl(pairs_file)[0])
    assert messages[0]["content"].startswith("Question: ") and "\nFix: " in messages[0]["content"]


def test_a_killed_bridge_resumes_from_its_shards_to_the_same_bytes(tiny_world, tmp_path):
    """SIGKILL after some shards of the editor model's rewrites: no output; the rerun reads them back (their
    edit distances too) and ends byte-identical to an uninterrupted run, stats included."""
    model, pairs_file = tiny_world
    params = {**SC_PARAMS, "editor": "tiny", "template": "Question: {prompt}\nGood: {winning}\nFix: {losing}",
              "seed": 0, "temperature": 1.0, "max_new_tokens": 16, "limit": 24, "stop": [], "shard_size": 2}

    def command(name):
        return [sys.executable, "-m", "workflow_scripts.bridge", "--params", json.dumps(params), "--source", pairs_file,
                "--editor", model, "--output", str(tmp_path / f"{name}.jsonl"), "--stats", str(tmp_path / f"{name}.stats.json")]

    resumed = killed_and_resumed(command, shard_folder(tmp_path / "killed.jsonl"), "shard*.jsonl")
    assert int(re.search(r"(\d+) shards resumed", resumed).group(1)) >= 3
    for suffix in (".jsonl", ".stats.json"):
        assert (tmp_path / f"killed{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()


def test_an_editor_that_rewrites_nothing_is_refused_before_writing(tiny_world, tmp_path, monkeypatch):
    """All rewrites empty (an editor that only emits whitespace): no pairs, a named error, no output."""
    monkeypatch.setattr(bridge, "model_editor", lambda *args: lambda chunk: [" \n"] * len(chunk))
    params = {**SC_PARAMS, "editor": "blank", "template": "{prompt}{winning}{losing}", "seed": 0, "limit": 8}
    out = tmp_path / "bridge.jsonl"
    with pytest.raises(InputError, match="pairs.jsonl: the editor blank rewrote each of the 8 .*no bridged pairs"):
        bridge.main(["--params", json.dumps(params), "--source", tiny_world[1], "--editor", tiny_world[0], "--output", str(out),
                     "--stats", str(tmp_path / "stats.json")])
    assert not out.exists() and not (tmp_path / "stats.json").exists()
