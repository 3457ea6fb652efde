"""Step-controlled negatives and pairs (SCDPO, Lu et al. 2024; upstream mathllm/Step-Controlled_DPO).

`generate`: for each correct step-by-step solution and each k (0 .. steps - 1), keep the first k
steps and sample a continuation one step at a time, the i-th generated step at temperature
min(temperature + i x temperature_increment, max_temperature); each step is its own request,
seeded from (id, k, i, seed). The continuation's final answer is checked with the evaluation's
answer checker. One job per seed, resumable in shards.

`pairs`: join the seed files on (id, k); a pair is (prompt + k correct steps, the rest of the
correct solution, the continuations whose final answer is wrong, in seed order). Continuations
that did not finish (token or step limit) have no final answer of their own and are dropped,
unless `keep_unfinished` is set (then the checker reads whatever number they end with).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from .answers import check
from .backends import Request, Sampling, request_seed
from .generation import LazyBackend, add_generation_arguments, fingerprint, prompt_ids
from .io import InputError, read_jsonl, run_cli, seed_files, write_jsonl
from .models import load_tokenizer, model_identity
from .records import validate_record
from .shards import run_in_shards


def split_steps(solution: str, separator: str) -> list[str]:
    """The solution's steps (empty pieces dropped)."""
    return [s for s in solution.split(separator) if s.strip()]


def prefix_of(steps: list[str], k: int, separator: str) -> str:
    """The first k steps as the given start of the response."""
    return "".join(s + separator for s in steps[:k])


def step_temperature(p: dict, i: int) -> float:
    return min(p["temperature"] + i * p["temperature_increment"], p["max_temperature"])


def require_answer(path: str, records: list[dict]) -> None:
    for lineno, r in enumerate(records, start=1):
        if not isinstance(r.get("answer"), str) or not r["answer"].strip():
            raise InputError(path, f"id {r['id']!r}: step-controlled pairs need the final answer of the solution",
                             lineno, "answer")


def continue_steps(backend, tokenizer, records: list[dict], p: dict, seed: int) -> list[dict]:
    """Continuations of every (record, k), generated step by step; all active ones batched per step."""
    sep = p["step_separator"]
    active = []
    for r in records:
        steps = split_steps(r["chosen"], sep)
        for k in range(len(steps)):
            active.append({"record": r, "k": k, "prefix": prefix_of(steps, k, sep), "text": "", "done": None})
    items = list(active)
    for i in range(p["max_steps"]):
        settings = Sampling(step_temperature(p, i), p["top_p"], p["top_k"], p["max_new_tokens"], (sep,))
        requests = [Request(prompt_ids(tokenizer, dict(a["record"], prefix=a["prefix"] + a["text"]), p),
                            request_seed(f"{a['record']['id']}\0k{a['k']}\0step{i}", seed), settings)
                    for a in active]
        for a, c in zip(active, backend.generate(requests)):
            text = c.text.lstrip() if a["k"] == 0 and not a["text"] else c.text
            if c.stop_string is not None:
                a["text"] += text + sep
            else:
                a["text"] += text
                a["done"] = "stop" if c.finish_reason == "stop" else "length"
        active = [a for a in active if a["done"] is None]
        if not active:
            break
    out = []
    for a in items:
        r = a["record"]
        predicted, correct = check(a["prefix"] + a["text"], r["answer"])
        out.append({"id": r["id"], "k": a["k"], "seed": seed, "text": a["text"], "finish_reason": a["done"] or "steps",
                    "predicted": predicted, "correct": correct})
    return out


def generate_main(args) -> None:
    torch.set_num_threads(args.threads)
    p = json.loads(args.params)
    records = read_jsonl(args.data, validate_record)[: p.get("limit")]
    require_answer(args.data, records)
    tokenizer = load_tokenizer(args.model, args.revision, args.trust_remote_code, args.chat_template)
    backend = LazyBackend(p["backend"], args.model, args.revision, p, args.trust_remote_code)
    identity = model_identity(args.model, args.revision, args.chat_template)
    results, resumed = run_in_shards(
        args.output, records, lambda chunk: continue_steps(backend, tokenizer, chunk, p, args.seed),
        fingerprint("step_controlled", p, args.seed, args.data, identity),
        p["shard_size"], f"step-controlled seed {args.seed}")
    kinds = Counter("wrong" if r["finish_reason"] == "stop" and not r["correct"] else
                    "correct" if r["finish_reason"] == "stop" else "unfinished" for r in results)
    print(f"seed {args.seed}: {len(results)} continuations of {len(records)} solutions: {dict(kinds)}; "
          f"{resumed} shards resumed")


def validate_continuation(record: dict, error) -> None:
    for field, kind in (("id", str), ("k", int), ("seed", int), ("text", str), ("finish_reason", str),
                        ("correct", bool)):
        if not isinstance(record.get(field), kind):
            raise error(f"missing or not a {kind.__name__}", field)


def build_pairs(data: list[dict], files: dict[int, str], separator: str,
                keep_unfinished: bool = False) -> tuple[list[dict], Counter]:
    """(pairs, counts) from the data and each seed's continuations, joined on (id, k), seeds in numeric order."""
    wanted = {(r["id"], k) for r in data for k in range(len(split_steps(r["chosen"], separator)))}
    wrong: dict[tuple[str, int], list[str]] = {key: [] for key in wanted}
    for seed in sorted(files):
        path, seen = files[seed], set()
        for lineno, c in enumerate(read_jsonl(path, validate_continuation), start=1):
            key = (c["id"], c["k"])
            if key not in wanted:
                raise InputError(path, f"(id {c['id']!r}, k {c['k']}) is not a step of the data", lineno, "id")
            if key in seen:
                raise InputError(path, f"duplicate (id {c['id']!r}, k {c['k']})", lineno, "id")
            if c["seed"] != seed:
                raise InputError(path, f"seed {c['seed']} in the file of seed {seed}", lineno, "seed")
            seen.add(key)
            if (keep_unfinished or c["finish_reason"] == "stop") and not c["correct"]:
                wrong[key].append(c["text"])
        if len(seen) != len(wanted):
            missing = sorted(wanted - seen)[0]
            raise InputError(path, f"{len(wanted) - len(seen)} (id, k) continuations are missing, e.g. {missing}",
                             field="id")
    pairs, counts = [], Counter()
    for r in data:
        steps = split_steps(r["chosen"], separator)
        if not check(r["chosen"], r["answer"])[1]:
            counts["solutions whose own answer does not check"] += 1
            continue
        for k in range(len(steps)):
            negatives = wrong[(r["id"], k)]
            if not negatives:
                counts["steps without a wrong continuation"] += 1
                continue
            pairs.append({"id": f"{r['id']}-k{k}", "source_id": r["id"], "k": k, "prompt": r["prompt"],
                          "prefix": prefix_of(steps, k, separator), "chosen": separator.join(steps[k:]),
                          "negatives": negatives, "answer": r["answer"]})
            counts["pairs"] += 1
    return pairs, counts


def pairs_main(args) -> None:
    p = json.loads(args.params)
    data = read_jsonl(args.data, validate_record)[: p.get("limit")]
    require_answer(args.data, data)
    files = seed_files(args.seed_files)
    pairs, counts = build_pairs(data, files, p["step_separator"], p["keep_unfinished"])
    if not pairs:
        raise InputError(args.seed_files[0], f"no step-controlled pair: no continuation was {'wrong' if p['keep_unfinished'] else 'finished and wrong'} "
                         f"({dict(counts)}); raise max_steps / max_new_tokens or the number of seeds")
    write_jsonl(args.output, pairs)
    print(f"{len(pairs)} step-controlled pairs from {len(data)} solutions x {len(files)} seeds: {dict(counts)}")


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_generation_arguments(sub.add_parser("generate", help="one seed's continuations"))
    join = sub.add_parser("pairs", help="join the seeds' continuations into pairs")
    join.add_argument("--params", required=True)
    join.add_argument("--data", required=True)
    join.add_argument("--seed-files", nargs="+", required=True)
    join.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    (generate_main if args.command == "generate" else pairs_main)(args)


if __name__ == "__main__":
    run_cli(main)
