"""Reference log-prob cache: l_ref(chosen) and l_ref(negative j) for every example, keyed by id.

Written as `<name>.safetensors` (tensors) and `<name>.json` (ids in row order, the tensors' sha256
and the digests of reference weights, tokenizer + chat template, data file and encoding settings).
Training refuses a cache whose digests differ from its own inputs, naming the one that differs,
and tensors that are not the ones recorded (changed or cut after they were written).

Built in shards of `shard_size` records, streamed from the data, each tokenised and forwarded on its own
(memory holds one shard's records and tokens, not the dataset's) and kept in a hidden folder beside the output
until the cache is whole: a killed job resumes from its finished shards. Under `launch --processes N` (one
process per GPU) process i computes every N-th shard from the i-th, on its own device; the first process
assembles the cache once all are written, so the bytes do not depend on N.
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from . import chat_templates
from .encoding import encode_examples
from .io import atomic_path, run_cli, sha256_file, write_json
from .logprobs import forward_logps
from .distributed import start_processes
from .models import load_model, load_tokenizer
from .records import iter_pairs
from .reference_cache import expected_digests
from .shards import kept_folder, shard_folder


class ReferenceModel:
    """The reference model and its tokenizer, loaded on first use onto `device` (a resumed job with every shard
    done loads neither)."""

    def __init__(self, model: str, revision: str | None, settings: dict, trust_remote_code: bool,
                 chat_template: str | None, device):
        self.args, self.settings, self.device, self.loaded = (model, revision, trust_remote_code, chat_template), \
            settings, device, None

    def get(self):
        if self.loaded is None:
            model, revision, trust, template = self.args
            tokenizer = load_tokenizer(model, revision, trust, template)
            net = load_model(model, revision, self.settings["dtype"], trust, self.settings.get("attn_implementation"))
            self.loaded = tokenizer, net.to(self.device).eval()
        return self.loaded


def shard_tensors(reference: ReferenceModel, records: dict[int, dict], rows: range, total: int, settings: dict,
                  source: str) -> tuple[dict, int]:
    """The log-probs of the records in `rows` (of a file of `total`; `records` by row: the shard's and the row
    before its first, KTO's mismatched pair of that row), tokenised here (memory holds one shard's tokens):
    summed [n, 1 + k] for (chosen, every negative); with `token_level` the per-token values (flat, row-major),
    with `kl_pairs` KTO's mismatched rows."""
    tokenizer, model = reference.get()
    examples, n_truncated = encode_examples(tokenizer, records, list(range(settings["negatives"])), settings,
                                            kl_pairs=bool(settings.get("kl_pairs")), source=source, rows=rows,
                                            total=total)
    sums, counts, flat, kl = [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(examples), settings["batch_size"]):
            out = forward_logps(model, examples[start: start + settings["batch_size"]], tokenizer.pad_token_id)
            # gathered on the host batch by batch (the model may sit on a GPU)
            sums.append(out.logps.sum(-1).double().cpu()), counts.append(out.mask.sum(-1).cpu())
            if settings.get("token_level"):
                flat.append(out.logps[out.mask].float().cpu())
            if out.kl_logps is not None:
                kl.append(out.kl_logps.double().cpu())
    tensors = {"sums": torch.cat(sums), "token_counts": torch.cat(counts).long()}
    if flat:
        tensors["token_logps"] = torch.cat(flat)
    if kl:
        tensors["kl_sums"] = torch.cat(kl)
    return tensors, n_truncated


def shards(data: str, settings: dict) -> tuple[list[str], Iterator[tuple[int, dict[int, dict], range]]]:
    """The data's ids, and its shards one at a time, streamed (memory of one shard's records): (index, records,
    rows). A first pass reads the ids and the last record (the mismatched pair of the first row)."""
    reader = "the runs reading this reference cache"
    ids, last = [], None
    for r in iter_pairs(data, settings["negatives"], reader):
        ids.append(r["id"])
        last = r
    size = settings["shard_size"]

    def chunks():
        chunk, previous = {}, {len(ids) - 1: last}
        for i, r in enumerate(iter_pairs(data, settings["negatives"], reader)):
            chunk[i] = r
            if len(chunk) == size or i == len(ids) - 1:
                start = i + 1 - len(chunk)
                yield start // size, {**previous, **chunk}, range(start, i + 1)
                chunk, previous = {}, {i: r}

    return ids, chunks()


def build(reference: ReferenceModel, data: str, settings: dict, folder: Path, state) -> tuple[list[str], int, int]:
    """This process's shards of the cache (every `state.num_processes`-th, from its own `state.process_index`)
    computed in the shard `folder`, kept until the cache is written; resumable. Returns the ids and the numbers
    of this process's shards computed and resumed."""
    ids, todo = shards(data, settings)
    computed = resumed = 0
    for index, records, rows in tqdm(todo, desc="reference log-probs", mininterval=5,
                                     disable=not state.is_main_process):
        path = folder / f"shard{index:06d}.safetensors"
        if index % state.num_processes != state.process_index:
            continue
        if _finished(path):
            resumed += 1
            continue
        tensors, truncated = shard_tensors(reference, records, rows, len(ids), settings, data)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"n_truncated": str(truncated)})
        computed += 1
    return ids, computed, resumed


def assemble(folder: Path, n_shards: int) -> tuple[dict, int]:
    """The whole cache's tensors from its shard files, in order, and its truncation count."""
    parts, n_truncated = [], 0
    for index in range(n_shards):
        with safe_open(str(folder / f"shard{index:06d}.safetensors"), "pt") as f:
            parts.append({key: f.get_tensor(key) for key in f.keys()})
            n_truncated += int(f.metadata()["n_truncated"])
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}, n_truncated


def _finished(path: Path) -> bool:
    """Whether a shard is done (a damaged one is redone)."""
    if not path.exists():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            int(f.metadata()["n_truncated"]), [f.get_slice(key).get_shape() for key in f.keys()]
        return True
    except Exception as e:  # safetensors raises its own error types for a cut or garbled file
        print(f"shard redone: {path.name}: {e}", flush=True)
        return False


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True,
                        help="JSON: max_length, max_prompt_length, batch_size, shard_size, ...")
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, help="<name>.safetensors; <name>.json is written beside it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trust-remote-code", action="store_true", help="the model's config entry allows its own code")
    chat_templates.add_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = json.loads(args.params)
    state = start_processes()
    digests = expected_digests(args.model, args.revision, sha256_file(args.data), settings, args.chat_template)
    fingerprint = {"params": settings, **digests}
    reference = ReferenceModel(args.model, args.revision, settings, args.trust_remote_code, args.chat_template,
                               state.device)
    # the first process keeps the shards of this fingerprint (or empties the folder), then all compute theirs
    folder = shard_folder(args.output)
    if state.is_main_process:
        kept_folder(folder, fingerprint)
    state.wait_for_everyone()
    ids, computed, resumed = build(reference, args.data, settings, folder, state)
    state.wait_for_everyone()  # every process's shards are written
    if state.is_main_process:
        write_cache(args, ids, digests, *assemble(folder, -(-len(ids) // settings["shard_size"])))
    print(f"process {state.process_index} of {state.num_processes}: {computed} shards computed, "
          f"{resumed} shards resumed")


def write_cache(args, ids: list[str], digests: dict, tensors: dict, n_truncated: int) -> None:
    """The tensors and their record (ids, digests, the tensors' sha256), then the shards go."""
    meta_path = args.output.removesuffix(".safetensors") + ".json"
    with atomic_path(args.output) as tmp:  # the tensors appear only after the record that names their digest
        save_file(tensors, str(tmp))
        write_json(meta_path, {
            "ids": ids, "n_examples": len(ids), "n_negatives": tensors["sums"].shape[1] - 1,
            "n_truncated": n_truncated, "model": args.model, "revision": args.revision, "sha256": sha256_file(tmp),
            "digests": digests,
        })
    shutil.rmtree(shard_folder(args.output))
    print(f"reference log-probs for {len(ids)} examples x {tensors['sums'].shape[1]} responses; "
          f"{n_truncated} responses truncated")


if __name__ == "__main__":
    run_cli(main)
