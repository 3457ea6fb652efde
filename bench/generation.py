"""Generation throughput of one backend at several request counts (run inside that backend's
environment; prints JSON). Requests cycle through the data's prompts, each with its own seed
(backends.request_seed of the request's index), the same on every backend."""
from __future__ import annotations

import argparse
import json
import time

import torch

from workflow_scripts.backends import Request, Sampling, load_backend, request_seed
from workflow_scripts.records import read_pairs
from workflow_scripts.generate import prompt_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--requests", type=int, nargs="+", default=[48, 256])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    p = {"backend": args.backend, "dtype": "float32", "batch_size": args.batch_size, "max_model_len": 512,
         "attn_implementation": None, "gpu_memory_utilization": 0.9, "over_long_prompts": "truncate"}
    backend = load_backend(args.backend, args.model, None, p)
    settings = Sampling(1.0, 1.0, 0, args.max_new_tokens)
    records = read_pairs(args.data)
    prompts = [prompt_ids(backend.tokenizer, r, {}) for r in records]
    backend.generate([Request(prompts[i], request_seed(f"warm-{i}", 0), settings) for i in range(8)])  # warm-up
    out = {"backend": args.backend, "threads": torch.get_num_threads(), "runs": {}}
    for n in args.requests:
        requests = [Request(prompts[i % len(prompts)], request_seed(f"request-{i}", 0), settings) for i in range(n)]
        start = time.perf_counter()
        done = backend.generate(requests)
        seconds = time.perf_counter() - start
        tokens = sum(len(backend.tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in done)
        out["runs"][str(n)] = {"requests": n, "new_tokens": tokens, "seconds": seconds,
                               "tokens_per_s": tokens / seconds, "requests_per_s": n / seconds}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
