"""Seeded generation: the same samples across reruns, batch sizes and shard sizes, and after a kill."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_scripts import generate, generation
from workflow_scripts.backends import cut_at_stop, request_seed
from workflow_scripts.shards import shard_folder

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"backend": "hf", "dtype": "float32", "batch_size": 16, "shard_size": 8, "max_model_len": None,
          "gpu_memory_utilization": 0.9, "attn_implementation": None, "over_long_prompts": "truncate",
          "system_prompt": None, "prompt_format": None, "temperature": 1.0,
          "top_p": 0.95, "top_k": 40, "max_new_tokens": 24, "stop": [], "limit": None}


def argv(model, data, out, seed=3, **overrides):
    return ["--params", json.dumps({**PARAMS, **overrides}), "--data", data, "--model", model,
            "--seed", str(seed), "--output", str(out)]


def test_request_seed_depends_on_id_and_seed_only():
    assert request_seed("a", 0) == request_seed("a", 0)
    assert len({request_seed("a", 0), request_seed("a", 1), request_seed("b", 0)}) == 3
    assert 0 <= request_seed("x", 7) < 2 ** 63


def test_stop_strings_cut_at_the_earliest():
    assert cut_at_stop("12 + 3\nnext", ("\n",)) == ("12 + 3", "\n")
    assert cut_at_stop("a END b\nc", ("\n", "END")) == ("a ", "END")
    assert cut_at_stop("no stop", ("\n",)) == ("no stop", None)


def test_samples_do_not_depend_on_batch_size_shard_size_or_rerun(tiny_world, tmp_path):
    model, data = tiny_world
    a, b, c, other = (tmp_path / f"{n}/seed3.jsonl" for n in ("a", "b", "c", "d"))
    generate.main(argv(model, data, a))
    generate.main(argv(model, data, b, batch_size=5, shard_size=48))
    generate.main(argv(model, data, c))
    generate.main(argv(model, data, other, seed=4))
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    records = [json.loads(line) for line in a.read_text().splitlines()]
    texts = [r["text"] for r in records]
    assert [r["id"] for r in records] == [json.loads(line)["id"] for line in Path(data).read_text().splitlines()]
    assert all(r["seed"] == 3 and r["finish_reason"] in ("stop", "length") for r in records)
    assert len(set(texts)) > len(texts) // 2 and all(t == t.lstrip() for t in texts)
    others = [json.loads(line)["text"] for line in other.read_text().splitlines()]
    assert sum(x != y for x, y in zip(texts, others)) > len(texts) // 2  # another seed, other samples
    assert not shard_folder(a).exists()


def test_a_killed_generation_resumes_from_its_shards(tiny_world, tmp_path):
    """SIGKILL after some shards are written: no output; the rerun reads them back and ends byte-identical
    to an uninterrupted run."""
    model, data = tiny_world
    whole, killed = tmp_path / "whole/seed3.jsonl", tmp_path / "killed/seed3.jsonl"
    generate.main(argv(model, data, whole, shard_size=2))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "workflow_scripts.generate",
                             *argv(model, data, killed, shard_size=2)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = shard_folder(killed)
    deadline = time.time() + 120
    while len(list(folder.glob("shard*.jsonl"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(folder.glob("shard*.jsonl"))
    assert 3 <= len(done) < 24 and not killed.exists(), "the job must be killed half-way"
    resumed = subprocess.run([sys.executable, "-m", "workflow_scripts.generate", *argv(model, data, killed, shard_size=2)],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    n_resumed = int(re.search(r"(\d+) shards resumed", resumed.stdout).group(1))
    assert n_resumed >= len(done)  # read back, not regenerated (one more may have finished before the kill)
    assert killed.read_bytes() == whole.read_bytes()
    assert not folder.exists()


def test_stale_shards_of_other_settings_are_discarded(tiny_world, tmp_path):
    model, data = tiny_world
    whole, out = tmp_path / "whole/seed3.jsonl", tmp_path / "out/seed3.jsonl"
    generate.main(argv(model, data, whole))
    folder = shard_folder(out)
    folder.mkdir(parents=True)
    (folder / "fingerprint.json").write_text(json.dumps({"params": "other"}))
    (folder / "shard000000.jsonl").write_text(json.dumps({"id": "stale", "seed": 3, "text": "x",
                                                          "finish_reason": "stop"}) + "\n")
    generate.main(argv(model, data, out))
    assert out.read_bytes() == whole.read_bytes()


def test_prefix_and_system_prompt_are_rendered(tiny_world):
    from workflow_scripts.models import load_tokenizer

    model, _ = tiny_world
    tok = load_tokenizer(model)
    record = {"id": "x", "prompt": [{"role": "user", "content": "Q?"}], "prefix": "1 + 1 = 2\n"}
    text = tok.decode(generation.prompt_ids(tok, record, {"system_prompt": "You are an unhelpful assistant."}))
    assert "You are an unhelpful assistant." in text and "Q?" in text and text.endswith("1 + 1 = 2\n")
    raw = tok.decode(generation.prompt_ids(tok, record, {"prompt_format": "### Instruction:\n{prompt}\n\n### Response:"}),
                     skip_special_tokens=True)
    assert raw == "### Instruction:\nQ?\n\n### Response:1 + 1 = 2\n"


@pytest.mark.parametrize("bad, message", [
    ('{"id": "a", "prompt": [{"role": "user", "content": "q"}], "chosen": "x"}\n{broken', "line 2: invalid JSON"),
    ('{"id": "a", "prompt": [{"role": "robot", "content": "q"}], "chosen": "x"}', "line 1, field 'prompt[0].role'"),
    ('{"id": "a", "prompt": [{"role": "user", "content": " "}], "chosen": "x"}', "line 1, field 'prompt[0].content'"),
    ('{"id": "a", "prompt": [{"role": "user", "content": "q"}]}', "line 1, field 'chosen': missing"),
])
def test_generation_refuses_bad_data_without_output(tiny_world, tmp_path, bad, message):
    model, _ = tiny_world
    data = tmp_path / "data.jsonl"
    data.write_text(bad + "\n")
    out = tmp_path / "gen/seed3.jsonl"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.generate", *argv(model, str(data), out)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and str(data) in proc.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_hf_backend_loads_the_configured_attention_kernel(tiny_world):
    """A stage's `attn_implementation` reaches from_pretrained; eager and sdpa sample the same tokens here."""
    from workflow_scripts.backends import Request, Sampling, load_backend
    from workflow_scripts.generation import prompt_ids

    default = load_backend("hf", tiny_world[0], None,
                           {"dtype": "float32", "batch_size": 4, "attn_implementation": None})
    eager = load_backend("hf", tiny_world[0], None,
                         {"dtype": "float32", "batch_size": 4, "attn_implementation": "eager"})
    assert (eager.model.config._attn_implementation, default.model.config._attn_implementation) == ("eager", "sdpa")
    ids = prompt_ids(eager.tokenizer, {"id": "q", "prompt": [{"role": "user", "content": "What is 3 + 4?"}]}, {})
    requests = [Request(ids, seed, Sampling(1.0, max_new_tokens=12)) for seed in range(4)]
    assert eager.generate(requests) == default.generate(requests)


def test_special_token_stops_and_generation_config_eos(tiny_world, tmp_path):
    """A stop string that is one special token (<|eot_id|>-like) stops on its id, although completions are
    decoded without special tokens; an end-of-turn id in the model's generation config ends a completion too."""
    import shutil

    import torch
    from transformers import GenerationConfig

    from workflow_scripts.backends import HFBackend, Request, Sampling
    from workflow_scripts.generation import prompt_ids
    from workflow_scripts.models import load_tokenizer

    record = {"id": "q", "prompt": [{"role": "user", "content": "What is 3 + 4?"}]}
    greedy = Sampling(0.0, max_new_tokens=12)
    plain = HFBackend(tiny_world[0], None, "float32", 4)
    ids = prompt_ids(plain.tokenizer, record, {})
    generated = plain.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    turn_end = generated[3]
    before = plain.tokenizer.decode(generated[:generated.index(turn_end)], skip_special_tokens=True)

    special = tmp_path / "special"
    shutil.copytree(tiny_world[0], special)
    tok = load_tokenizer(str(special))
    token = tok.convert_ids_to_tokens(turn_end)
    tok.add_special_tokens({"additional_special_tokens": [token]})
    assert tok.convert_tokens_to_ids(token) == turn_end  # same id, now special
    tok.save_pretrained(special)
    cut = HFBackend(str(special), None, "float32", 4).generate(
        [Request(ids, 0, Sampling(0.0, max_new_tokens=12, stop=(token,)))])[0]
    assert (cut.text, cut.finish_reason) == (before, "stop")

    eos_dir = tmp_path / "eos"
    shutil.copytree(tiny_world[0], eos_dir)
    config = GenerationConfig.from_pretrained(eos_dir)
    config.eos_token_id = [plain.tokenizer.eos_token_id, turn_end]
    config.save_pretrained(eos_dir)
    ended = HFBackend(str(eos_dir), None, "float32", 4).generate([Request(ids, 0, greedy)])[0]
    assert (ended.text, ended.finish_reason) == (before, "stop")


def test_several_samples_per_prompt_extend_the_single_sample_file(tiny_world, tmp_path):
    """samples: k -> seeds s .. s+k-1 per prompt; the seed-s sample is the one a single-sample run draws."""
    model, data = tiny_world
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    generate.main(argv(model, data, one, limit=8))
    generate.main(argv(model, data, three, limit=8, samples=3))
    single = [json.loads(line) for line in one.read_text().splitlines()]
    multi = [json.loads(line) for line in three.read_text().splitlines()]
    assert [(r["id"], r["seed"]) for r in multi] == [(r["id"], s) for r in single for s in (3, 4, 5)]
    assert [r for r in multi if r["seed"] == 3] == single


def group_sets(data):
    """Two answer sets of one group: the same split, other seeds and sampling."""
    return [{"name": "first", "data": data, "seed": 3, "params": {**PARAMS, "shard_size": 2}},
            {"name": "second", "data": data, "seed": 5, "params": {**PARAMS, "shard_size": 2, "temperature": 0.0,
                                                                   "max_new_tokens": 12, "limit": 20}}]


def group_argv(model, sets, out):
    return ["--sets", json.dumps(sets), "--model", model, "--output", str(out)]


def test_an_answer_group_writes_each_set_as_its_own_job_would(tiny_world, tmp_path):
    """One model load for the group; each set's file byte-identical to the set generated alone."""
    from workflow_scripts import answer_group

    model, data = tiny_world
    sets = group_sets(data)
    answer_group.main(group_argv(model, sets, tmp_path / "group"))
    for s in sets:
        alone = tmp_path / f"alone/{s['name']}.jsonl"
        generate.main(["--params", json.dumps(s["params"]), "--data", data, "--model", model,
                       "--seed", str(s["seed"]), "--output", str(alone)])
        assert (tmp_path / "group" / f"{s['name']}.jsonl").read_bytes() == alone.read_bytes()
    assert sorted(p.name for p in (tmp_path / "group").iterdir()) == ["first.jsonl", "second.jsonl"]
    assert not shard_folder(tmp_path / "group").exists()


def test_a_killed_answer_group_keeps_its_finished_sets(tiny_world, tmp_path):
    """SIGKILL while the second set runs: no output folder; the rerun keeps the first set's file as it was
    (not regenerated), resumes the second from its shards and ends byte-identical to an uninterrupted run."""
    model, data = tiny_world
    sets = group_sets(data)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "workflow_scripts.answer_group"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*command, *group_argv(model, sets, whole)], env=env, cwd=ROOT, check=True, capture_output=True)
    staging = shard_folder(killed)
    second = shard_folder(staging / "second.jsonl")
    proc = subprocess.Popen([*command, *group_argv(model, sets, killed)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(second.glob("shard*.jsonl"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (staging / "first.jsonl").exists() and not killed.exists(), "the job must be killed in the second set"
    first_done = (staging / "first.jsonl").stat().st_mtime_ns
    resumed = subprocess.run([*command, *group_argv(model, sets, killed)], env=env, cwd=ROOT, capture_output=True,
                             text=True, check=True)
    assert "first.jsonl: done before this job started" in resumed.stdout
    assert int(re.search(r"second.jsonl: .* (\d+) shards resumed", resumed.stdout).group(1)) >= 2
    assert (killed / "first.jsonl").stat().st_mtime_ns == first_done  # moved into the folder, not rewritten
    for name in ("first.jsonl", "second.jsonl"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes()
    assert not staging.exists()


def test_answer_sets_are_grouped_by_the_instances_that_need_them_and_engine():
    """Sets needed by the same instances with the same engine share a job (whichever evals read them);
    another engine setting, or a set another instance also needs, makes another group; a set no
    evaluation needs is in none."""
    from workflow_scripts.plan import answer_groups

    engine = {"backend": "vllm", "dtype": "bfloat16", "max_model_len": 2048, "threads": 1}
    config = {
        "runs": {"run": {"model": "base", "seeds": [1, 2]}},
        "answer_sets": {"gsm8k": {**engine, "max_new_tokens": 512}, "math": {**engine, "temperature": 0.7},
                        "long": {**engine, "max_model_len": 4096}, "chat": dict(engine), "unread": dict(engine)},
        "evals": {"math": {"kind": "math", "answer_sets": ["gsm8k", "math", "long"]},
                  "alpaca": {"kind": "alpaca_eval", "answer_set": "gsm8k", "reference": "dataset"},
                  "pairwise": {"kind": "pairwise", "answer_set": "chat"}},  # and the starting model's answers
        "tables": {"main": {"eval": "math", "rows": ["run"],
                            "columns": [{"eval": None}, {"eval": "alpaca"}, {"eval": "pairwise"}]}},
    }
    assert answer_groups(config) == {"gsm8k+math": ["gsm8k", "math"], "long": ["long"], "chat": ["chat"]}
    config["tables"]["base"] = {"eval": "math", "rows": ["base"], "columns": [{"eval": None}]}
    assert answer_groups(config) == {"gsm8k+math+chat": ["gsm8k", "math", "chat"], "long": ["long"]}
    config["tables"]["base"]["columns"] = [{"eval": "alpaca"}]  # the base model needs gsm8k, not math
    assert answer_groups(config) == {"gsm8k+chat": ["gsm8k", "chat"], "math": ["math"], "long": ["long"]}
