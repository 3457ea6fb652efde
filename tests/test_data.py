"""Data normalisation, validation messages, merge on id and the synthetic set."""
import json
import re
from pathlib import Path

import pytest
import yaml

from workflow_scripts import data, merge, synthetic_task
from workflow_scripts.answers import answers_equal
from workflow_scripts.io import InputError, read_jsonl
from workflow_scripts.records import read_pairs

ROOT = Path(__file__).resolve().parents[1]

MAPPING = {"id": "index", "prompt": "question", "chosen": "answer", "answer_after": "####"}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_synthetic_splits_are_disjoint_deterministic_and_gsm8k_shaped():
    a = synthetic_task.make_splits(3, {"train": 300, "eval": 50}, 20)
    b = synthetic_task.make_splits(3, {"train": 300, "eval": 50}, 20)
    assert a == b
    assert not {p["question"] for p in a["train"]} & {p["question"] for p in a["eval"]}
    for p in a["train"]:
        steps = p["answer"].split("\n")
        final = int(steps[-1].removeprefix("#### "))
        assert steps[-1].startswith("#### ") and final >= 0
        assert int(steps[-2].split("= ")[1]) == final
        assert all(int(x) <= 20 for x in p["question"].split() if x.isdigit())


def paper_mappings() -> dict[str, tuple[str, dict]]:
    """`format (config:dataset)` -> (format, mapping) for every hub dataset of the paper configs and the
    real-model world: the synthetic stand-in read through the mapping the config reads the hub one with."""
    out = {}
    for path in sorted((ROOT / "experiments").glob("*.yaml")) + [ROOT / "real.yaml"]:
        for name, d in yaml.safe_load(path.read_text())["datasets"].items():
            fmt = synthetic_task.HUB_FORMATS.get(d.get("hf_id")) or d.get("format")
            out[f"{fmt} ({path.stem}:{name})"] = fmt, d["mapping"]
    return out


PAPER_MAPPINGS = paper_mappings()


def test_every_format_is_read_by_a_config():
    assert {fmt for fmt, _ in PAPER_MAPPINGS.values()} == set(synthetic_task.HUB_FORMATS.values())


@pytest.mark.parametrize("case", PAPER_MAPPINGS)
def test_synthetic_sets_in_the_real_formats_read_through_the_real_mappings(case):
    """The same problems in each dataset's columns normalise to the same prompts and final answers."""
    fmt, mapping = PAPER_MAPPINGS[case]
    problems = synthetic_task.make_splits(0, {"train": 30}, 20)["train"]
    rows = [synthetic_task.in_format(p, fmt) for p in problems]
    recs = data.normalise(list(enumerate(rows)), fmt, "train", mapping, f"{fmt}.jsonl")
    assert [r["prompt"][0]["content"] for r in recs] == [p["question"] for p in problems]
    truths = [p["answer"].rsplit("#### ", 1)[1] for p in problems]
    if mapping.get("answer") or mapping.get("answer_after"):
        assert all(answers_equal(r["answer"], t) for r, t in zip(recs, truths))
    marks = {"gsm8k": "<<", "metamathqa": "\nThe answer is: ", "ultrafeedback": "#### ",
             "argilla_ultrafeedback": "#### ", "dft_selfplay": "#### ", "minervamath": "", "amc": ""}  # others: LaTeX
    if mapping.get("turns"):  # multi-turn questions: no chosen; follow-ups, categories, references per turn
        assert all(len(r["followups"]) == 1 and "chosen" not in r for r in recs)
        graded = [r for r in recs if r["category"] in ("math", "reasoning", "coding")]
        assert graded and all(len(r["references"]) == 2 for r in graded)
        return
    assert all(marks.get(fmt, "\\boxed{") in r["chosen"] for r in recs)
    if mapping.get("rejected"):
        assert all(r["rejected"] != r["chosen"] and r["rejected"].rsplit("#### ", 1)[1] != t
                   for r, t in zip(recs, truths))
    if mapping.get("negatives"):  # 1-to-m: every negative a wrong answer to the same problem
        assert all(len(r["negatives"]) == 4 and all(n.rsplit("#### ", 1)[1] != t for n in r["negatives"])
                   for r, t in zip(recs, truths))


def test_normalise_makes_stable_ids_and_answers():
    rows = synthetic_task.make_splits(0, {"train": 5}, 20)["train"]
    recs = data.normalise(list(enumerate(rows)), "arith", "train", MAPPING, "src.jsonl")
    assert [r["id"] for r in recs] == [f"arith-train-{i}" for i in range(5)]
    assert recs[0]["prompt"] == [{"role": "user", "content": rows[0]["question"]}]
    assert recs[0]["answer"] == rows[0]["answer"].rsplit("#### ", 1)[1]


def test_answer_column_or_marker():
    rows = [(0, {"problem": "1/2 + 1/2?", "solution": "It is $\\boxed{1}$.", "answer": "1"})]
    mapping = {"prompt": "problem", "chosen": "solution", "answer": "answer"}
    assert data.normalise(rows, "math", "train", mapping, "m.jsonl")[0]["answer"] == "1"
    rows = [(0, {"problem": "2 + 3?", "solution": "2 + 3 = 5\n#### 5", "answer": 5})]
    assert data.normalise(rows, "gsm", "train", mapping, "m.jsonl")[0]["answer"] == "5"
    marker = {"prompt": "problem", "chosen": "solution", "answer_after": "####"}
    assert data.normalise(rows, "gsm", "train", marker, "m.jsonl")[0]["answer"] == "5"


def test_mapping_paths_pick_messages_out_of_chat_columns():
    """UltraFeedback-style rows: chosen / rejected are [user, assistant] message lists."""
    rows = [{"prompt_id": "p7", "prompt": "Name a prime.",
             "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
             "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}]}]
    mapping = {"id": "prompt_id", "prompt": "prompt", "chosen": "chosen[1].content", "rejected": "rejected[-1].content"}
    rec = data.normalise(list(enumerate(rows)), "uf", "train", mapping, "uf.jsonl")[0]
    assert (rec["id"], rec["chosen"], rec["rejected"]) == ("uf-train-p7", "7", "8")
    for bad, message in [("chosen[2].content", "'chosen[2]' does not exist in this row"),
                         ("chosen[1].text", "'chosen[1].text' does not exist in this row"),
                         ("chosen[1]content", "bad column path 'chosen[1]content' at 'content'")]:
        with pytest.raises(InputError, match=re.escape(message)) as e:
            data.normalise(list(enumerate(rows)), "uf", "train", dict(mapping, chosen=bad), "uf.jsonl")
        assert "uf.jsonl, line 1" in str(e.value) and "mapping.chosen" in str(e.value)


MT_BENCH = {"id": "prompt_id", "turns": "prompt", "category": "category", "references": "reference"}


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "one string"}, "prompt", "must be a non-empty list of the user's turns (strings)"),
    ({"prompt": []}, "prompt", "must be a non-empty list of the user's turns (strings)"),
    ({"prompt": ["q1", ""]}, "followups", "must be a list of non-empty strings"),
    ({"reference": ["a", 3]}, "references", "must be a list of non-empty strings"),
    ({"category": 7}, "category", "must be a string"),
])
def test_multi_turn_questions_are_validated(row, field, message):
    """MT-Bench rows: the file, line and field of each malformed value; a good row keeps its turns."""
    good = {"prompt_id": 81, "prompt": ["q1", "q2"], "category": "math", "reference": ["a", "b"]}
    rec, = data.normalise([(0, good)], "mt", "test", MT_BENCH, "mt.jsonl")
    assert rec == {"id": "mt-test-81", "prompt": [{"role": "user", "content": "q1"}], "followups": ["q2"],
                   "category": "math", "references": ["a", "b"]}
    with pytest.raises(InputError, match=re.escape(f"mt.jsonl, line 2, field '{field}': {message}")):
        data.normalise([(0, good), (1, {**good, **row})], "mt", "test", MT_BENCH, "mt.jsonl")


@pytest.mark.parametrize("row, field, message", [
    ({"index": 0, "question": "", "answer": "1\n#### 1"}, "prompt[0].content", "non-empty string content"),
    ({"index": 0, "question": "q?", "answer": 5}, "chosen", "non-empty string"),
    ({"index": 0, "question": "q?"}, "answer", "column 'answer' is missing (mapping.chosen = 'answer')"),
    ({"index": 0, "question": "q?", "answer": "no marker"}, "answer", "no '####' answer marker"),
    ({"index": 0, "question": [{"role": "bot", "content": "x"}], "answer": "#### 1"}, "prompt[0].role", "role"),
    ({"index": 0, "question": [{"role": "user", "content": 5}], "answer": "#### 1"}, "prompt[0].content",
     "non-empty string content"),
    ({"index": 0, "question": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "answer": "#### 1"}, "prompt[1].role", "the last prompt message must come from the user"),
])
def test_bad_records_name_file_line_and_field(row, field, message):
    good = {"index": 1, "question": "ok?", "answer": "1 + 1 = 2\n#### 2"}
    with pytest.raises(InputError) as e:
        data.normalise([(0, good), (1, row)], "d", "train", MAPPING, "raw.jsonl")
    assert "raw.jsonl, line 2" in str(e.value) and f"field '{field}'" in str(e.value) and message in str(e.value)


def test_data_cli_rejects_bad_json_and_duplicate_ids_without_output(tmp_path):
    src = write(tmp_path / "raw.jsonl", [{"index": 0, "question": "q", "answer": "#### 1"}, "{not json"])
    out = tmp_path / "out.jsonl"
    argv = ["--params", json.dumps({"mapping": MAPPING}), "--dataset", "d", "--split", "train",
            "--source", src, "--output", str(out)]
    with pytest.raises(InputError, match=r"raw.jsonl, line 2: invalid JSON"):
        data.main(argv)
    write(tmp_path / "raw.jsonl", [{"index": 0, "question": "q", "answer": "#### 1"}] * 2)
    with pytest.raises(InputError, match=r"line 2, field 'id': duplicate id 'd-train-0'"):
        data.main(argv)
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


UF_MAPPING = {"prompt": "prompt", "chosen": "chosen[-1].content", "rejected": "rejected[-1].content"}


def uf_rows(n):
    return [{"prompt": f"q{i}", "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"b{i}"}]}
            for i in range(n)]


def chat(*turns):
    return [{"role": role, "content": content} for role, content in turns]


UF_ROW = {"prompt": "q?", "chosen": chat(("user", "q?"), ("assistant", "good")),
          "rejected": chat(("user", "q?"), ("assistant", "bad"))}
UF_FIRST = {"prompt": "prompt", "chosen": "chosen[1].content", "rejected": "rejected[1].content"}  # dpo_bmc's mapping


@pytest.mark.parametrize("row, mapping, field, message", [
    ({"chosen": chat(("assistant", "good"), ("user", "q?"))}, UF_FIRST, "chosen[0].role",
     "role 'assistant' where the conversation needs 'user'"),
    ({"chosen": chat(("human", "q?"), ("assistant", "good"))}, UF_FIRST, "chosen[0].role",
     "unknown role 'human' (known: system, user, assistant)"),
    ({"chosen": chat(("user", "q?"), ("assistant", "good"), ("system", "be brief"))}, UF_FIRST, "chosen[2].role",
     "role 'system' where the conversation needs 'user'"),
    ({"chosen": chat(("user", "q?"), ("user", "good"))}, UF_FIRST, "chosen[1].role",
     "role 'user' where the conversation needs 'assistant'"),
    ({"chosen": chat(("user", "q?"), ("assistant", "good"), ("user", "more?"))}, UF_MAPPING, "chosen[2].role",
     "mapping.chosen takes a message of role 'user'; chosen must be one of role 'assistant'"),
    ({"rejected": chat(("user", "another question?"), ("assistant", "bad"))}, UF_FIRST, "rejected",
     "the conversation before the rejected turn differs from the one before the chosen turn"),
    ({"prompt": "another question?"}, UF_FIRST, "chosen",
     "the last user message before the mapped turn is not the record's prompt (mapping.prompt)"),
    ({"chosen": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": None}]}, UF_FIRST, "chosen",
     "must be a non-empty string"),
    ({"chosen": [{"role": "user", "content": ["q?"]}, {"role": "assistant", "content": "good"}]}, UF_FIRST,
     "chosen[0].content", "message content must be a string"),
])
def test_chat_columns_are_checked_as_conversations(row, mapping, field, message):
    """UltraFeedback-style chat columns: roles from the known set in a valid order, the mapped turn's role, chosen
    and rejected answering the same conversation, which ends in the record's prompt; file, line and field named."""
    good, = data.normalise([(0, UF_ROW)], "uf", "train", mapping, "uf.jsonl")
    assert (good["chosen"], good["rejected"]) == ("good", "bad")
    with pytest.raises(InputError) as e:
        data.normalise([(0, UF_ROW), (1, {**UF_ROW, **row})], "uf", "train", mapping, "uf.jsonl")
    assert str(e.value).startswith(f"uf.jsonl, line 2, field '{field}': {message}")


SELFPLAY = {"real": chat(("user", "q?"), ("assistant", "good")), "generated_0": chat(("user", "q?"), ("assistant", "b0")),
            "generated_1": chat(("user", "q?"), ("assistant", "b1"))}
SELFPLAY_MAPPING = {"prompt": "real[0].content", "chosen": "real[1].content", "negatives": "generated_{i}[1].content"}


@pytest.mark.parametrize("row, mapping, field, message", [
    ({"generated_1": chat(("user", "q?"), ("user", "b1"))}, SELFPLAY_MAPPING, "generated_1[1].role",
     "role 'user' where the conversation needs 'assistant'"),
    ({"generated_1": chat(("user", "other?"), ("assistant", "b1"))}, SELFPLAY_MAPPING, "generated_1",
     "the conversation before the negatives turn differs from the one before the chosen turn"),
    ({"generated_1": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": None}]}, SELFPLAY_MAPPING,
     "negatives", "must be a list of strings"),
])
def test_one_to_m_negatives_by_column_pattern_or_list(row, mapping, field, message):
    """The released DFT self-play columns: negatives from a column pattern (or a list of paths), each checked
    as a response to the record's conversation."""
    good, = data.normalise([(0, SELFPLAY)], "uf", "train", SELFPLAY_MAPPING, "uf.jsonl")
    assert (good["chosen"], good["negatives"]) == ("good", ["b0", "b1"])
    listed = {**SELFPLAY_MAPPING, "negatives": ["generated_1[1].content", "generated_0[1].content"]}
    assert data.normalise([(0, SELFPLAY)], "uf", "train", listed, "uf.jsonl")[0]["negatives"] == ["b1", "b0"]
    with pytest.raises(InputError) as e:
        data.normalise([(0, SELFPLAY), (1, {**SELFPLAY, **row})], "uf", "train", mapping, "uf.jsonl")
    assert str(e.value).startswith(f"uf.jsonl, line 2, field '{field}': {message}")
    with pytest.raises(InputError, match=re.escape("uf.jsonl, line 1: no column matches mapping.negatives = "
                                                   "'sampled_{i}[1].content'")):
        data.normalise([(0, SELFPLAY)], "uf", "train", {**SELFPLAY_MAPPING, "negatives": "sampled_{i}[1].content"},
                       "uf.jsonl")


def test_a_system_message_first_and_multi_turn_context_are_valid():
    context = chat(("system", "be brief"), ("user", "q0"), ("assistant", "a0"), ("user", "q?"))
    row = {"prompt": "q?", "chosen": context + chat(("assistant", "good")), "rejected": context + chat(("assistant", "bad"))}
    rec, = data.normalise([(0, row)], "uf", "train", UF_MAPPING, "uf.jsonl")
    assert (rec["chosen"], rec["rejected"]) == ("good", "bad")


def test_identical_pairs_are_dropped_and_counted_or_refused(tmp_path, capsys):
    rows = [UF_ROW, {**UF_ROW, "rejected": chat(("user", "q?"), ("assistant", "good "))}, UF_ROW]
    src, out = write(tmp_path / "uf.jsonl", rows), tmp_path / "out.jsonl"
    argv = ["--dataset", "uf", "--split", "train", "--source", src, "--output", str(out)]
    data.main(["--params", json.dumps({"mapping": UF_FIRST}), *argv])
    assert [r["id"] for r in read_jsonl(out)] == ["uf-train-0", "uf-train-2"]
    assert "uf.jsonl: dropped 1 pairs whose chosen and rejected are the same text" in capsys.readouterr().out
    out.unlink()
    with pytest.raises(InputError, match=re.escape("uf.jsonl, line 2, field 'rejected[1].content': chosen and "
                                                   "rejected are the same text (identical_pairs: refuse)")):
        data.main(["--params", json.dumps({"mapping": UF_FIRST, "identical_pairs": "refuse"}), *argv])
    assert not out.exists()


@pytest.mark.parametrize("lines, message", [
    ([], "split 'train' of dataset 'uf' holds no records"),
    (["", ""], "split 'train' of dataset 'uf' holds no records"),
    ([json.dumps(UF_ROW), "", json.dumps({**UF_ROW, "prompt": "other?"})],
     "line 3, field 'chosen': the last user message before the mapped turn is not the record's prompt"),
])
def test_empty_splits_are_refused_and_line_numbers_are_the_files(tmp_path, lines, message):
    src, out = tmp_path / "uf.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(InputError, match=re.escape(f"uf.jsonl{', ' if 'line' in message else ': '}{message}")):
        data.main(["--params", json.dumps({"mapping": UF_FIRST}), "--dataset", "uf", "--split", "train",
                   "--source", str(src), "--output", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("spec, expected", [
    ("train", ("train", slice(None, None))),
    ("train[:11000]", ("train", slice(None, 11000))),
    ("train[11000:13750]", ("train", slice(11000, 13750))),
    ("train_sft[-5:]", ("train_sft", slice(-5, None))),
])
def test_split_slices(spec, expected):
    assert data.parse_split(spec) == expected
    with pytest.raises(ValueError, match="bad split"):
        data.parse_split("train[1]")


def test_hub_dataset_with_seeded_shuffle_and_held_out_slices(tmp_path, monkeypatch):
    """The hub loader (datasets.load_dataset at a revision; here a local dataset folder in the hub's
    parquet layout): shuffled with a seed, sliced into disjoint train / test splits, ids = source index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "hub/data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(uf_rows(20)), tmp_path / "hub/data/train-00000-of-00001.parquet")
    spec = {"hf_id": str(tmp_path / "hub"), "revision": "0" * 40, "shuffle_seed": 7, "mapping": UF_MAPPING,
            "splits": {"train": "train[:12]", "test": "train[12:]"}}
    out = {}
    for split in ("train", "test"):
        path = tmp_path / f"{split}.jsonl"
        data.main(["--params", json.dumps(spec), "--dataset", "uf", "--split", split, "--output", str(path)])
        out[split] = read_jsonl(path)
    index = {split: [int(r["id"].rsplit("-", 1)[1]) for r in recs] for split, recs in out.items()}
    assert len(index["train"]) == 12 and len(index["test"]) == 8
    assert sorted(index["train"] + index["test"]) == list(range(20))
    assert index["train"] != sorted(index["train"])  # shuffled
    assert all(r["chosen"] == f"a{i}" and r["rejected"] == f"b{i}" and r["id"] == f"uf-train-{i}"
               for r, i in zip(out["train"], index["train"]))
    again = tmp_path / "again.jsonl"
    data.main(["--params", json.dumps(spec), "--dataset", "uf", "--split", "train", "--output", str(again)])
    assert again.read_bytes() == (tmp_path / "train.jsonl").read_bytes()


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_local_json_and_parquet_sources(tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = uf_rows(3)
    src = tmp_path / f"raw{suffix}"
    if suffix == ".json":
        src.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "out.jsonl"
    data.main(["--params", json.dumps({"mapping": UF_MAPPING}), "--dataset", "uf", "--split", "train",
               "--source", str(src), "--output", str(out)])
    assert [(r["id"], r["chosen"]) for r in read_jsonl(out)] == [("uf-train-0", "a0"), ("uf-train-1", "a1"),
                                                                ("uf-train-2", "a2")]


@pytest.mark.parametrize("name, content, message", [
    ("raw.json", '{"prompt": "q"}', "raw.json: a JSON source must be a list of objects"),
    ("raw.json", '[{"prompt": "q",', "raw.json, line 1: invalid JSON"),
    ("raw.csv", "prompt,chosen\n", "raw.csv: a local source must be .jsonl, .json or .parquet"),
    ("raw.jsonl", '{"prompt": "q", "chosen": [{"role": "assistant", "content": ""}], "rejected": "x"}',
     "raw.jsonl, line 1, field 'chosen': must be a non-empty string"),
])
def test_bad_local_sources_give_no_output(tmp_path, name, content, message):
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    mapping = {"prompt": "prompt", "chosen": "chosen[-1].content", "rejected": "rejected"}
    with pytest.raises(InputError) as e:
        data.main(["--params", json.dumps({"mapping": mapping}), "--dataset", "uf", "--split", "train",
                   "--source", str(src), "--output", str(out)])
    assert message in str(e.value)
    assert not out.exists()


def gen_file(tmp_path, seed, ids, texts=None):
    rows = [{"id": i, "seed": seed, "text": (texts or {}).get(i, f"{i} s{seed}"), "finish_reason": "stop"} for i in ids]
    return write(tmp_path / f"seed{seed}.jsonl", rows)


def test_merge_joins_on_id_in_numeric_seed_order(tmp_path):
    records = [{"id": f"x-{i}", "prompt": [{"role": "user", "content": "q"}], "chosen": "a"} for i in range(3)]
    files = {s: gen_file(tmp_path, s, [f"x-{i}" for i in range(3)]) for s in (10, 2, 1)}
    merged = list(merge.merge(write(tmp_path / "data.jsonl", records), files))
    assert [r["id"] for r in merged] == ["x-0", "x-1", "x-2"]
    assert merged[0]["negatives"] == ["x-0 s1", "x-0 s2", "x-0 s10"]
    assert [r["id"] for r in merge.merge(str(tmp_path / "data.jsonl"), {1: gen_file(tmp_path, 1, ["x-0", "x-1"])},
                                         limit=2)] == ["x-0", "x-1"]


@pytest.mark.parametrize("ids, message", [
    (["x-0"], "seed0.jsonl, field 'id': ends after 1 records; the data goes on from id 'x-1'"),
    (["x-0", "x-0", "x-1"], "seed0.jsonl, line 2, field 'id': id 'x-0' where the data's record 2 is 'x-1'"),
    (["x-1", "x-0"], "seed0.jsonl, line 1, field 'id': id 'x-1' where the data's record 1 is 'x-0'"),
    (["x-0", "x-1", "x-9"], "seed0.jsonl, line 3, field 'id': id 'x-9' after the data's last record (2 records)"),
])
def test_merge_refuses_missing_duplicate_reordered_and_unknown_ids_by_line(tmp_path, ids, message):
    """The merge reads the data and the seed files side by side (memory of one record each): a seed file that
    departs from the data's ids in order is refused at that line, and nothing is written."""
    records = [{"id": f"x-{i}", "prompt": [{"role": "user", "content": "q"}], "chosen": "a"} for i in range(2)]
    out = tmp_path / "merged.jsonl"
    with pytest.raises(InputError, match=re.escape(message)):
        merge.main(["--data", write(tmp_path / "data.jsonl", records), "--seed-files", gen_file(tmp_path, 0, ids),
                    "--output", str(out)])
    assert not out.exists()


def test_read_jsonl_reports_line_of_bad_json(tmp_path):
    path = write(tmp_path / "f.jsonl", ['{"a": 1}', "[1, 2]"])
    with pytest.raises(InputError, match="f.jsonl, line 2: a record must be a JSON object"):
        read_jsonl(path)


def test_hub_files_read_a_repo_file_at_the_revision(tmp_path, monkeypatch):
    """`hub_files` (repos whose loading script `datasets` refuses, e.g. tatsu-lab/alpaca_eval): the file at the
    pinned revision through `datasets`' json builder; the hf:// read itself is served here by a local file."""
    import datasets

    rows = [{"instruction": f"Say {i}.", "output": f"{i}", "generator": "gpt4_turbo"} for i in range(5)]
    local = tmp_path / "alpaca_eval_gpt4_baseline.json"
    local.write_text(json.dumps(rows))
    calls = []
    real = datasets.load_dataset

    def load(builder, data_files=None, split=None, **kw):
        calls.append((builder, data_files, split))
        return real(builder, data_files=str(local), split=split, cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", load)
    rev = "2edc6fad8be6b14ea7230aabfd08188da6b8b814"
    spec = {"hf_id": "tatsu-lab/alpaca_eval", "revision": rev, "hub_files": {"eval": "alpaca_eval_gpt4_baseline.json"},
            "splits": {"eval": "eval"}, "mapping": {"prompt": "instruction", "chosen": "output"}}
    out = tmp_path / "eval.jsonl"
    data.main(["--params", json.dumps(spec), "--dataset", "alpaca_eval", "--split", "eval", "--output", str(out)])
    assert calls == [("json", f"hf://datasets/tatsu-lab/alpaca_eval@{rev}/alpaca_eval_gpt4_baseline.json", "train")]
    records = read_jsonl(out)
    assert [r["prompt"][-1]["content"] for r in records] == [f"Say {i}." for i in range(5)]
    assert [r["chosen"] for r in records] == [str(i) for i in range(5)]


def test_an_empty_pairs_file_is_refused_by_name(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [])
    with pytest.raises(InputError, match="pairs.jsonl: no records; the trainer needs at least one"):
        read_pairs(path, reader="the trainer")


def test_the_schema_offers_every_synthetic_format():
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    assert schema["properties"]["datasets"]["additionalProperties"]["properties"]["format"]["enum"] == \
        list(synthetic_task.FORMATS)
    problem = synthetic_task.make_splits(0, {"t": 1}, 20)["t"][0]
    assert all(synthetic_task.in_format(problem, fmt) for fmt in synthetic_task.FORMATS)
