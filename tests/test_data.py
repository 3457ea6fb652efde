"""Data normalisation, validation messages, merge on id and the synthetic set."""
import json
import re

import pytest

from workflow_scripts import data, merge, synthetic
from workflow_scripts.io import InputError, read_jsonl

MAPPING = {"id": "index", "prompt": "question", "chosen": "answer", "answer_after": "####"}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_synthetic_splits_are_disjoint_deterministic_and_gsm8k_shaped():
    a = synthetic.make_splits(3, {"train": 300, "eval": 50}, 20)
    b = synthetic.make_splits(3, {"train": 300, "eval": 50}, 20)
    assert a == b
    assert not {p["question"] for p in a["train"]} & {p["question"] for p in a["eval"]}
    for p in a["train"]:
        steps = p["answer"].split("\n")
        final = int(steps[-1].removeprefix("#### "))
        assert steps[-1].startswith("#### ") and final >= 0
        assert int(steps[-2].split("= ")[1]) == final
        assert all(int(x) <= 20 for x in p["question"].split() if x.isdigit())


def test_normalise_makes_stable_ids_and_answers():
    rows = synthetic.make_splits(0, {"train": 5}, 20)["train"]
    recs = data.normalise(rows, "arith", "train", MAPPING, "src.jsonl")
    assert [r["id"] for r in recs] == [f"arith-train-{i}" for i in range(5)]
    assert recs[0]["prompt"] == [{"role": "user", "content": rows[0]["question"]}]
    assert recs[0]["answer"] == rows[0]["answer"].rsplit("#### ", 1)[1]


def test_mapping_paths_pick_messages_out_of_chat_columns():
    """UltraFeedback-style rows: chosen / rejected are [user, assistant] message lists."""
    rows = [{"prompt_id": "p7", "prompt": "Name a prime.",
             "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
             "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}]}]
    mapping = {"id": "prompt_id", "prompt": "prompt", "chosen": "chosen[1].content", "rejected": "rejected[-1].content"}
    rec = data.normalise(rows, "uf", "train", mapping, "uf.jsonl")[0]
    assert (rec["id"], rec["chosen"], rec["rejected"]) == ("uf-train-p7", "7", "8")
    for bad, message in [("chosen[2].content", "'chosen[2]' does not exist in this row"),
                         ("chosen[1].text", "'chosen[1].text' does not exist in this row"),
                         ("chosen[1]content", "bad column path 'chosen[1]content' at 'content'")]:
        with pytest.raises(InputError, match=re.escape(message)) as e:
            data.normalise(rows, "uf", "train", dict(mapping, chosen=bad), "uf.jsonl")
        assert "uf.jsonl, line 1" in str(e.value) and "mapping.chosen" in str(e.value)


@pytest.mark.parametrize("row, field, message", [
    ({"index": 0, "question": "", "answer": "1\n#### 1"}, "prompt[0].content", "non-empty string content"),
    ({"index": 0, "question": "q?", "answer": 5}, "chosen", "non-empty string"),
    ({"index": 0, "question": "q?"}, "answer", "column 'answer' is missing (mapping.chosen = 'answer')"),
    ({"index": 0, "question": "q?", "answer": "no marker"}, "answer", "no '####' answer marker"),
    ({"index": 0, "question": [{"role": "bot", "content": "x"}], "answer": "#### 1"}, "prompt[0].role", "role"),
])
def test_bad_records_name_file_line_and_field(row, field, message):
    good = {"index": 1, "question": "ok?", "answer": "1 + 1 = 2\n#### 2"}
    with pytest.raises(InputError) as e:
        data.normalise([good, row], "d", "train", MAPPING, "raw.jsonl")
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


def gen_file(tmp_path, seed, ids, texts=None):
    rows = [{"id": i, "seed": seed, "text": (texts or {}).get(i, f"{i} s{seed}"), "finish_reason": "stop"} for i in ids]
    return write(tmp_path / f"seed{seed}.jsonl", rows)


def test_merge_joins_on_id_in_numeric_seed_order(tmp_path):
    records = [{"id": f"x-{i}", "prompt": [{"role": "user", "content": "q"}], "chosen": "a"} for i in range(3)]
    files = {s: gen_file(tmp_path, s, [f"x-{i}" for i in (2, 0, 1)]) for s in (10, 2, 1)}
    merged = merge.merge(records, files)
    assert [r["id"] for r in merged] == ["x-0", "x-1", "x-2"]
    assert merged[0]["negatives"] == ["x-0 s1", "x-0 s2", "x-0 s10"]


def test_merge_refuses_missing_duplicate_and_unknown_ids(tmp_path):
    records = [{"id": f"x-{i}", "prompt": [{"role": "user", "content": "q"}], "chosen": "a"} for i in range(2)]
    with pytest.raises(InputError, match="1 ids of the data are missing, e.g. 'x-1'"):
        merge.merge(records, {0: gen_file(tmp_path, 0, ["x-0"])})
    with pytest.raises(InputError, match="line 2, field 'id': duplicate id 'x-0'"):
        merge.merge(records, {0: gen_file(tmp_path, 0, ["x-0", "x-0", "x-1"])})
    with pytest.raises(InputError, match="not in the data, e.g. 'x-9'"):
        merge.merge(records, {0: gen_file(tmp_path, 0, ["x-0", "x-1", "x-9"])})


def test_read_jsonl_reports_line_of_bad_json(tmp_path):
    path = write(tmp_path / "f.jsonl", ['{"a": 1}', "[1, 2]"])
    with pytest.raises(InputError, match="f.jsonl, line 2: a record must be a JSON object"):
        read_jsonl(path)
