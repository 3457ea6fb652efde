"""Bridged pairs for DPO-BMC (Jiang et al. 2024): (pseudo-winning, losing).

An editor rewrites the losing response with targeted edits, using the winning one as reference.
Editors:
- a model (any generation backend) prompted with a configurable template holding {prompt},
  {winning} and {losing}; upstream used gpt-4-0125-preview and did not publish its prompt;
- `synthetic_repair`: for the synthetic arithmetic task, a deterministic minimal edit that repairs
  only the wrong steps of the losing response: a step is a line that computes something (an
  equation, well-formed or not); each wrong one is replaced by the reference solution's step at
  that position, missing steps are added before the answer line, extra ones removed, and the
  final answer line set. Its other text (narrative lines) is left alone.
Output records: `{"id", "prompt", "chosen": pseudo-winning, "negatives": [losing], "winning"}`, and
a statistics JSON with the mean character edit distances pseudo-winning <-> losing and
winning <-> losing (the bridging should make the first smaller).
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice

import torch
from rapidfuzz.distance import Levenshtein

from . import chat_templates
from .backends import Request, Sampling, request_seed
from .generation import LazyBackend, fingerprint, prompt_ids
from .io import InputError, run_cli, sha256_file, write_json, write_jsonl
from .models import load_tokenizer, model_identity
from .records import iter_pairs
from .shards import batches, stream_in_shards

SYNTHETIC_REPAIR = "synthetic_repair"
STEP = re.compile(r"=|\d\s*[-+*/]\s*\d")  # a line that computes something (well-formed or not)
ANSWER_LINE = re.compile(r"^\s*####")
DISTANCES = "edit_distances"  # a shard record's field, dropped from the output


def _same_step(a: str, b: str) -> bool:
    return a.split() == b.split()


def synthetic_repair(losing: str, winning: str) -> str:
    """The losing response with its wrong steps replaced by the reference's and the right final answer."""
    reference = [line for line in winning.split("\n") if STEP.search(line) and not ANSWER_LINE.match(line)]
    answer = next(line for line in reversed(winning.split("\n")) if ANSWER_LINE.match(line))
    out, step, answered = [], 0, False
    for line in losing.split("\n"):
        if ANSWER_LINE.match(line):
            if not answered:
                out.extend(reference[step:])
                step = len(reference)
                out.append(answer)
                answered = True
        elif STEP.search(line):
            if step < len(reference):
                out.append(line if _same_step(line, reference[step]) else reference[step])
                step += 1
        else:
            out.append(line)
    if not answered:
        out.extend(reference[step:])
        out.append(answer)
    return "\n".join(out)


def editor_messages(template: str, record: dict) -> list[dict]:
    """The editor's prompt: the template filled with the record's prompt, winning and losing responses."""
    text = template.format(prompt=record["prompt"][-1]["content"], winning=record["chosen"],
                           losing=record["negatives"][0])
    return [{"role": "user", "content": text}]


def model_editor(model: str, revision: str | None, p: dict, trust_remote_code: bool = False,
                 chat_template: str | None = None):
    """A function that asks the editor model for each record's pseudo-winning response."""
    tokenizer = load_tokenizer(model, revision, trust_remote_code, chat_template)
    backend = LazyBackend(p["backend"], model, revision, p, trust_remote_code)
    settings = Sampling(p["temperature"], p["top_p"], p["top_k"], p["max_new_tokens"], tuple(p["stop"]))

    def edit(chunk: list[dict]) -> list[str]:
        requests = [Request(prompt_ids(tokenizer, {"prompt": editor_messages(p["template"], r)}, p),
                            request_seed(r["id"], p["seed"]), settings) for r in chunk]
        return [c.text.strip() for c in backend.generate(requests)]

    return edit


def bridge(records: list[dict], rewrites: list[str]) -> list[dict]:
    """Pairs (pseudo-winning, losing), each with its edit distances (in the shards, not the output); a
    record whose rewrite is empty is dropped."""
    pairs = []
    for r, pseudo in zip(records, rewrites):
        if pseudo.strip():
            pair = {"id": r["id"], "prompt": r["prompt"], "chosen": pseudo, "negatives": [r["negatives"][0]],
                    "winning": r["chosen"]}
            pairs.append(pair | {key: r[key] for key in ("prefix", "answer") if key in r} | {DISTANCES: {
                "pseudo_winning_to_losing": Levenshtein.distance(pseudo, r["negatives"][0]),
                "winning_to_losing": Levenshtein.distance(r["chosen"], r["negatives"][0])}})
    return pairs


def losing_responses(source: str, limit: int | None, editor: str, counts: Counter) -> Iterator[dict]:
    """The source's records one at a time, counted, each with its first negative only: the losing response the
    editor rewrites (a merged file may carry 16). synthetic_repair needs a '#### answer' line in each winning one."""
    for lineno, r in enumerate(islice(iter_pairs(source, 1, "bridging"), limit), start=1):
        if editor == SYNTHETIC_REPAIR and not any(ANSWER_LINE.match(line) for line in r["chosen"].split("\n")):
            raise InputError(source, f"id {r['id']!r}: {SYNTHETIC_REPAIR} needs a '#### answer' line in the "
                             "winning response", lineno, "chosen")
        counts["records"] += 1
        yield r | {"negatives": r["negatives"][:1]}


def without_distances(pairs: Iterable[dict], counts: Counter) -> Iterator[dict]:
    """The pairs as written, their edit distances summed into `counts` (with the number of pairs)."""
    for pair in pairs:
        counts["pairs"] += 1
        for key, distance in pair[DISTANCES].items():
            counts[key] += distance
        yield {k: v for k, v in pair.items() if k != DISTANCES}


def mean_distances(counts: Counter) -> dict:
    """The pairs' mean edit distances, in characters (RapidFuzz's Levenshtein: linear memory, bit-parallel)."""
    n = max(counts["pairs"], 1)
    means = {key: counts[key] / n for key in ("pseudo_winning_to_losing", "winning_to_losing")}
    return {**means, "unit": "characters (Levenshtein), mean over pairs"}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the bridge's config entry")
    parser.add_argument("--source", required=True, help="pairs: a merged generation or a dataset with `rejected`")
    parser.add_argument("--editor", default=None, help="the editor model (path or hub id); none for synthetic_repair")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--output", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trust-remote-code", action="store_true", help="the editor's config entry allows its own code")
    chat_templates.add_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = json.loads(args.params)
    counts = Counter()
    if p["editor"] == SYNTHETIC_REPAIR:
        def edit(chunk):
            return [synthetic_repair(r["negatives"][0], r["chosen"]) for r in chunk]
        identity = {"stage": "bridge", "params": p, "source": sha256_file(args.source)}
    else:
        edit = model_editor(args.editor, args.revision, p, args.trust_remote_code, args.chat_template)
        identity = fingerprint("bridge", p, p["seed"], args.source,
                               model_identity(args.editor, args.revision, args.chat_template))

    def finish(read):
        def pairs():
            yield from without_distances(read(), counts)
            if not counts["pairs"]:  # refused before the output exists (the finished shards stay for a rerun)
                raise InputError(args.source, f"the editor {p['editor']} rewrote each of the {counts['records']} "
                                 "losing responses to an empty text: no bridged pairs")
        write_jsonl(args.output, pairs())

    # streamed: memory holds one shard of records, not the source
    chunks = batches(losing_responses(args.source, p.get("limit"), p["editor"], counts), p["shard_size"])
    resumed = stream_in_shards(args.output, chunks, None, lambda chunk: bridge(chunk, edit(chunk)), identity,
                               f"bridge ({p['editor']})", finish)
    stats = {"editor": p["editor"], "records": counts["records"], "pairs": counts["pairs"],
             "dropped_empty_rewrites": counts["records"] - counts["pairs"], **mean_distances(counts)}
    write_json(args.stats, stats)
    print(f"{json.dumps(stats)}; {resumed} shards resumed")


if __name__ == "__main__":
    run_cli(main)
