"""Artifacts checked where they are read: JSONL files and model folders carry the digest their writer
recorded (`<name>.sha256`); a file changed or cut afterwards is refused, naming it, never used."""
import json
import re
import shutil
import subprocess

import pytest

from workflow_scripts import generate
from workflow_scripts.io import (
    InputError, read_json, read_jsonl, record_digest, sha256_file, write_json, write_jsonl,
)
from workflow_scripts.models import weights_digest

RECORDS = [{"id": f"r{i}", "prompt": [{"role": "user", "content": f"q{i} é"}], "chosen": f"a{i}"} for i in range(6)]


def test_jsonl_cut_at_a_record_boundary_is_refused(tmp_path):
    path = tmp_path / "merged.jsonl"
    write_jsonl(path, RECORDS)
    assert read_jsonl(path) == RECORDS
    # sha256sum's own format: the record checks with the standard tool too
    assert subprocess.run(["sha256sum", "-c", "merged.jsonl.sha256"], cwd=tmp_path, capture_output=True).returncode == 0
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))  # three whole records: valid JSONL, half the data
    with pytest.raises(InputError, match=re.escape(f"{path}: the content (sha256 ") + ".* it was changed or cut"):
        read_jsonl(path)


def test_an_eval_json_edited_by_hand_is_refused(tmp_path):
    path = tmp_path / "evals/toy_eval/sft/seed42.json"
    write_json(path, {"scores": {"toy_gen": {"exact_match": 0.125}}})
    assert read_json(path)["scores"]["toy_gen"]["exact_match"] == 0.125
    path.write_text(path.read_text().replace("0.125", "0.312"))  # a table value moved by hand
    with pytest.raises(InputError, match=re.escape(f"{path}: the content (sha256")):
        read_json(path)


def test_jsonl_without_a_record_is_read_as_is_bom_allowed_and_bad_bytes_named(tmp_path):
    path = tmp_path / "user.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS[:2]))
    assert read_jsonl(path) == RECORDS[:2]  # a UTF-8 BOM (Windows tools) is not an error
    path.write_bytes(path.read_bytes() + b"\n" + b'{"id": "x\xff"}\n')
    with pytest.raises(InputError, match=re.escape(f"{path}, line 4: not UTF-8 text")):
        read_jsonl(path)  # the line of the file, blank lines counted


def test_weights_changed_after_they_were_written_are_refused_by_a_stage(tiny_world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_world[0], model)
    record_digest(model, weights_digest(str(model)))
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(blob))
    params = {"backend": "hf", "dtype": "float32", "batch_size": 4, "shard_size": 8, "attn_implementation": None,
              "system_prompt": None,
              "prompt_format": None, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 4, "stop": [],
              "limit": None}
    out = tmp_path / "answers/seed0.jsonl"
    with pytest.raises(InputError, match=re.escape(f"{model}: the content (sha256")):
        generate.main(["--params", json.dumps(params), "--data", tiny_world[1], "--model", str(model),
                       "--seed", "0", "--output", str(out)])
    assert not out.exists()


def test_a_damaged_shard_is_redone_not_resumed(tmp_path, capsys):
    from workflow_scripts.shards import run_in_shards, shard_folder

    def work(chunk):
        if chunk[0] == 4 and not killed:
            killed.append(True)
            raise KeyboardInterrupt  # the job is killed in its third shard
        return [{"id": f"i{i}", "square": i * i} for i in chunk]

    killed, out = [True], tmp_path / "out.jsonl"
    whole, _ = run_in_shards(tmp_path / "whole.jsonl", list(range(6)), work, {"v": 1}, 2, "squares")
    killed.clear()
    with pytest.raises(KeyboardInterrupt):
        run_in_shards(out, list(range(6)), work, {"v": 1}, 2, "squares")
    first = shard_folder(out) / "shard000000.jsonl"
    first.write_text(first.read_text().splitlines(keepends=True)[0])  # cut: one of its two records left
    records, resumed = run_in_shards(out, list(range(6)), work, {"v": 1}, 2, "squares")
    assert (records, resumed) == (whole, 1) and out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert f"shard redone: {first}: the content (sha256" in capsys.readouterr().out


def test_weight_digests_are_remembered_until_the_file_is_written_even_with_its_size_and_mtime_kept(
        tiny_world, tmp_path, monkeypatch):
    """Every stage and rank checks the weights it loads; an unchanged file is hashed once, a file written in
    place is hashed again even when its size and modification time are set back (its ctime moves)."""
    import os

    from workflow_scripts import models

    monkeypatch.setattr(models, "DIGEST_MEMO", tmp_path / "memo")
    hashed = []
    monkeypatch.setattr(models, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    model = tmp_path / "model"
    shutil.copytree(tiny_world[0], model)
    first = weights_digest(str(model))
    assert weights_digest(str(model)) == first and len(hashed) == 1
    weights = model / "model.safetensors"
    stat, blob = weights.stat(), bytearray(weights.read_bytes())
    blob[-3] ^= 0x01
    weights.write_bytes(bytes(blob))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert weights_digest(str(model)) != first and len(hashed) == 2


def test_the_weights_digest_covers_pytorch_bin_weights_and_refuses_a_folder_without_weights(tiny_world, tmp_path):
    """A model published as pytorch_model.bin (MetaMath-Mistral-7B at its pinned revision) gets the digest of its
    weights, so a changed .bin is caught; a folder without any weight file is refused, never hashed as nothing."""
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "bin_model"
    shutil.copytree(tiny_world[0], model)
    weights = model / "model.safetensors"
    torch.save(load_file(weights), model / "pytorch_model.bin")
    weights.unlink()
    record_digest(model, weights_digest(str(model)))
    with open(model / "pytorch_model.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match=re.escape(f"{model}: the content (sha256")):
        weights_digest(str(model))
    (model / "pytorch_model.bin").unlink()
    with pytest.raises(InputError, match=re.escape(f"{model}: no weight files (*.safetensors, *.bin)")):
        weights_digest(str(model))


def test_a_stream_that_fails_mid_way_leaves_the_earlier_file_and_its_digest(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"id": "a"}])
    before = (path.read_bytes(), (tmp_path / "out.jsonl.sha256").read_text())

    def failing():
        yield {"id": "b"}
        raise InputError("src.jsonl", "bad record", 2, "id")

    with pytest.raises(InputError, match="src.jsonl, line 2"):
        write_jsonl(path, failing())
    assert (path.read_bytes(), (tmp_path / "out.jsonl.sha256").read_text()) == before
    assert read_jsonl(path) == [{"id": "a"}]  # still checks against its record
