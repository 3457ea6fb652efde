"""An answer group (workflow_scripts/plan/instances.py): one model answers every prompt of each of the
group's answer sets, loaded once for all of them.

Output: a folder with one `<answer set>.jsonl` per set, the rows as workflow_scripts/generate.py writes
them (one response per prompt and sample). A killed job resumes: finished sets wait, whole, in a hidden
folder beside the output (kept while the group's settings, data and model are unchanged), the set in
progress from its finished shards; the folder appears only when every set is done.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from . import chat_templates
from .generation import LazyBackend, fingerprint, generate_file
from .io import atomic_path, run_cli
from .models import load_tokenizer, model_identity
from .shards import kept_folder, shard_folder


def group_fingerprint(sets: list[dict], model: dict) -> list[dict]:
    """Everything the group's answers depend on, set by set (`model`: the model's identity)."""
    return [{"name": s["name"], **fingerprint("generate", s["params"], s["seed"], s["data"], model)} for s in sets]


def answer_group(sets: list[dict], output: Path, args) -> None:
    """Answer each set into the staging folder (skipping those done), then publish the folder whole."""
    identity = model_identity(args.model, args.revision, args.chat_template)
    staging = kept_folder(shard_folder(output), group_fingerprint(sets, identity))
    engine = sets[0]["params"]  # the group's sets share the engine settings
    tokenizer = load_tokenizer(args.model, args.revision, args.trust_remote_code, args.chat_template)
    backend = LazyBackend(engine["backend"], args.model, args.revision, engine, args.trust_remote_code)
    for s in sets:
        staged = staging / f"{s['name']}.jsonl"
        if staged.exists():
            print(f"{staged.name}: done before this job started", flush=True)
            continue
        print(generate_file(s["params"], s["data"], s["seed"], staged, identity, tokenizer, backend), flush=True)
    with atomic_path(output) as tmp:
        tmp.mkdir()
        for s in sets:
            os.replace(staging / f"{s['name']}.jsonl", tmp / f"{s['name']}.jsonl")
    shutil.rmtree(staging)


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", required=True,
                        help="JSON: [{name, params (the answer set's config entry), data, seed}], one per set")
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--trust-remote-code", action="store_true", help="the model's config entry allows its own code")
    chat_templates.add_argument(parser)
    parser.add_argument("--output", required=True, help="the group's folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    answer_group(json.loads(args.sets), Path(args.output), args)


if __name__ == "__main__":
    run_cli(main)
