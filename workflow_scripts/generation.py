"""Seeded generation, the library that the stages answering prompts share (generate, answer_group,
step_controlled, bridge, the judges).

Every request is seeded from (id, seed), so a sample does not depend on batch size, batch order
or the number of workers. The prompt is the chat template (with the optional system prompt) or a
raw prompt format, then the record's `prefix` if it has one. Output records:
`{"id", "seed", "text", "finish_reason"}`, EOS removed and leading whitespace stripped (upstream).
A multi-turn question (MT-Bench: `followups`) is answered turn by turn, each turn's prompt holding the
model's own earlier answers, as FastChat's gen_model_answer does; its record adds `turns` (every answer,
`text` is the first) and `finish_reasons`. Work is done in shards: a killed job resumes without redoing
finished shards.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import chat_templates
from .backends import Request, Sampling, load_backend, request_seed
from .encoding import encode_prompt, render_prompt
from .io import InputError, read_jsonl, sha256_file
from .records import validate_record
from .shards import run_in_shards


def sampling(p: dict) -> Sampling:
    """A generating stage's sampling settings (every generating section of the schema gives each a default)."""
    return Sampling(p["temperature"], p["top_p"], p["top_k"], p["max_new_tokens"], tuple(p["stop"]))


def prompt_ids(tokenizer, record: dict, p: dict) -> list[int]:
    text = render_prompt(tokenizer, record["prompt"], p.get("system_prompt"), p.get("prompt_format"),
                         record.get("prefix", ""))
    return encode_prompt(tokenizer, text)


def sampling_for(p: dict, record: dict) -> Sampling:
    """The sampling of a record: its category's temperature where the stage sets one (MT-Bench)."""
    temperature = p.get("category_temperature", {}).get(record.get("category"), p["temperature"])
    return sampling({**p, "temperature": temperature})


def turn_seed(record_id: str, seed: int, turn: int) -> int:
    """The request seed of a turn (the first turn's is the record's, as for a single-turn prompt)."""
    return request_seed(record_id if turn == 0 else f"{record_id}#turn{turn + 1}", seed)


def answer_turns(chunk: list[tuple[dict, int]], request, backend) -> list[tuple[list[str], list[str]]]:
    """(answers, finish reasons) per (record, seed): the prompt, then each follow-up after the model's own
    earlier answers; one generate call per turn for the whole chunk."""
    out = [([], []) for _ in chunk]
    for turn in range(1 + max(len(r.get("followups", [])) for r, _ in chunk)):
        todo = [k for k, (r, _) in enumerate(chunk) if turn <= len(r.get("followups", []))]
        requests = []
        for k in todo:
            r, seed = chunk[k]
            history = [m for answer, question in zip(out[k][0], r.get("followups", []))
                       for m in ({"role": "assistant", "content": answer}, {"role": "user", "content": question})]
            requests.append(request({**r, "prompt": r["prompt"] + history}, seed, turn))
        for k, c in zip(todo, backend.generate(requests)):
            out[k][0].append(c.text.lstrip())
            out[k][1].append(c.finish_reason)
    return out


class LazyBackend:
    """Loads the model on first use, so a job whose shards are all done never loads it."""

    def __init__(self, name: str, model: str, revision: str | None, p: dict, trust_remote_code: bool = False):
        self.args, self.backend = (name, model, revision, p, trust_remote_code), None

    def generate(self, requests: list[Request]):
        if self.backend is None:
            self.backend = load_backend(*self.args)
        return self.backend.generate(requests)

    @property
    def prompts_cut(self) -> int:
        """Prompts the backend cut to fit its context (vLLM's over_long_prompts: truncate), this process."""
        return getattr(self.backend, "prompts_cut", 0)


def fingerprint(stage: str, p: dict, seed: int, data: str, model: dict) -> dict:
    """Everything a stage's shards depend on (`model`: the model's identity, its chat template included)."""
    return {"stage": stage, "params": p, "seed": seed, "data": sha256_file(data), "model": model}


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of a stage that generates one seed's file from data with a model."""
    parser.add_argument("--params", required=True, help="JSON: the stage's config entry")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trust-remote-code", action="store_true", help="the model's config entry allows its own code")
    chat_templates.add_argument(parser)


def generate_file(p: dict, data: str, seed: int, output: str | Path, model: dict, tokenizer, backend) -> str:
    """Write one seed's responses to the records of `data` (the stage's params `p`) to `output`, in
    resumable shards (`model`: the identity they are fingerprinted with); returns a summary line for the log."""
    records = read_jsonl(data, validate_record)[: p.get("limit")]
    if p.get("prompt_format") and any("followups" in r for r in records):
        raise InputError(data, "multi-turn questions need the chat template; prompt_format renders one turn",
                         field="followups")
    seeds = [seed + k for k in range(p.get("samples", 1))]  # answer sets may take several per prompt
    cut_before = backend.prompts_cut  # a backend may serve several files

    def work(chunk: list[tuple[dict, int]]) -> list[dict]:
        answers = answer_turns(chunk, lambda r, s, turn: Request(
            prompt_ids(tokenizer, r, p), turn_seed(r["id"], s, turn), sampling_for(p, r)), backend)
        return [{"id": r["id"], "seed": s, "text": texts[0], "finish_reason": reasons[0],
                 **({"turns": texts, "finish_reasons": reasons} if "followups" in r else {})}
                for (r, s), (texts, reasons) in zip(chunk, answers)]

    results, resumed = run_in_shards(output, [(r, s) for r in records for s in seeds], work,
                                     fingerprint("generate", p, seed, data, model),
                                     p["shard_size"], f"generate seed {seed}")
    stopped = sum(r["finish_reason"] == "stop" for r in results)
    return (f"{Path(output).name}: seeds {seeds[0]}..{seeds[-1]}: {len(results)} samples ({p['backend']}), "
            f"{stopped} stopped before the length limit, {resumed} shards resumed, "
            f"{backend.prompts_cut - cut_before} prompts cut to fit the context")
