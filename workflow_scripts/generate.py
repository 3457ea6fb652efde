"""Generate stage: one seed's responses to a split's prompts with the HF or the vLLM backend (negatives,
SPIN's own answers), in resumable shards; the library is workflow_scripts/generation.py."""
from __future__ import annotations

import argparse
import json

import torch

from .generation import LazyBackend, add_generation_arguments, generate_file
from .io import run_cli
from .models import load_tokenizer, model_identity


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_generation_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = json.loads(args.params)
    tokenizer = load_tokenizer(args.model, args.revision, args.trust_remote_code, args.chat_template)
    backend = LazyBackend(p["backend"], args.model, args.revision, p, args.trust_remote_code)
    identity = model_identity(args.model, args.revision, args.chat_template)
    print(generate_file(p, args.data, args.seed, args.output, identity, tokenizer, backend))


if __name__ == "__main__":
    run_cli(main)
