"""Seeded generation of responses (negatives) with the HF `generate` backend.

Every request gets its own random stream, seeded from (id, seed), so a sample does not depend
on batch size, batch order or the number of workers. Output records:
`{"id", "seed", "text", "finish_reason"}`, EOS removed and leading whitespace stripped.
"""
from __future__ import annotations

import argparse
import hashlib
import json

import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .data import validate_record
from .encoding import encode_prompt, render_prompt
from .io import read_jsonl, run_cli, write_jsonl
from .models import load_model, load_tokenizer


def request_seed(example_id: str, seed: int) -> int:
    """A 63-bit seed derived from the example id and the run seed."""
    digest = hashlib.sha256(f"{example_id}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class PerRequestSampler(LogitsProcessor):
    """Samples each row with its own generator and returns logits that greedy search follows.

    The warpers (temperature, top-k, top-p) are applied per row; the sampled token gets 0 and
    every other token -inf, so `generate(do_sample=False)` emits exactly the sampled token.
    """

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.greedy = temperature == 0
        self.warpers = [] if self.greedy else [TemperatureLogitsWarper(temperature)]
        if top_k and top_k > 0 and not self.greedy:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0 and not self.greedy:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.greedy:
            return scores
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        for row, gen in enumerate(self.generators):
            row_scores = scores[row: row + 1]
            for warp in self.warpers:
                row_scores = warp(input_ids[row: row + 1], row_scores)
            probs = torch.softmax(row_scores, dim=-1)
            chosen[row] = torch.multinomial(probs.cpu(), 1, generator=gen)[0, 0]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), chosen.to(scores.device)] = 0.0
        return out


def generate_hf(model, tokenizer, prompts: list[str], seeds: list[int], p: dict) -> list[tuple[str, str]]:
    """(text, finish_reason) for each prompt; one batch."""
    enc = [encode_prompt(tokenizer, text) for text in prompts]
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(enc):  # left padding
        ids[row, width - len(e):] = torch.tensor(e)
        mask[row, width - len(e):] = 1
    sampler = PerRequestSampler(seeds, p["temperature"], p.get("top_k", 0), p.get("top_p", 1.0))
    out = model.generate(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False,
        max_new_tokens=p["max_new_tokens"], logits_processor=LogitsProcessorList([sampler]),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        temperature=None, top_k=None, top_p=None)
    results = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row, reason = row[: row.index(tokenizer.eos_token_id)], "stop"
        else:
            reason = "length"
        text = tokenizer.decode(row, skip_special_tokens=True)
        for stop in p.get("stop", []):
            if stop in text:
                text, reason = text[: text.index(stop)], "stop"
        results.append((text.lstrip(), reason))
    return results


def generate(records: list[dict], model_path: str, p: dict, seed: int, revision: str | None = None) -> list[dict]:
    tokenizer = load_tokenizer(model_path, revision)
    model = load_model(model_path, revision, p.get("dtype", "float32"))
    model.eval()
    out = []
    batch = p["batch_size"]
    with torch.inference_mode():
        for start in tqdm(range(0, len(records), batch), desc=f"generate seed {seed}", mininterval=5):
            chunk = records[start: start + batch]
            prompts = [render_prompt(tokenizer, r["prompt"], p.get("system_prompt"), p.get("prompt_format"))
                       for r in chunk]
            seeds = [request_seed(r["id"], seed) for r in chunk]
            for r, (text, reason) in zip(chunk, generate_hf(model, tokenizer, prompts, seeds, p)):
                out.append({"id": r["id"], "seed": seed, "text": text, "finish_reason": reason})
    return out


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the generation's config entry")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = json.loads(args.params)
    records = read_jsonl(args.data, validate_record)
    if p.get("limit"):
        records = records[: p["limit"]]
    results = generate(records, args.model, p, args.seed, args.revision)
    write_jsonl(args.output, results)
    stopped = sum(r["finish_reason"] == "stop" for r in results)
    print(f"seed {args.seed}: {len(results)} samples, {stopped} stopped at EOS")


if __name__ == "__main__":
    run_cli(main)
