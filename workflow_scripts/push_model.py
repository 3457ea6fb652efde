"""Push a trained model folder with its model card (as the repo's README.md) to the hub in one commit,
and record the commit it made: the pinned revision a later config loads it at.

The repo is created when missing (private unless the config says otherwise). The token comes only from
the environment (HF_TOKEN), as everywhere in this workflow. Output JSON: repo id, the commit (revision),
its URL, and the sha256 of every file pushed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from .io import run_cli, sha256_file, write_json


def push(model: Path, card: Path, repo: str, private: bool) -> dict:
    """One commit: every file of the model folder but hidden ones (Snakemake's marker), its own training
    card replaced by `card`."""
    files = {str(p.relative_to(model)): p for p in sorted(model.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model).parts)}
    files["README.md"] = card
    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.create_commit(repo, operations=[CommitOperationAdd(name, str(path)) for name, path in files.items()],
                             commit_message=f"Upload {model} with its model card")
    return {"repo_id": repo, "revision": info.oid, "url": info.commit_url,
            "files": {name: sha256_file(path) for name, path in files.items()}}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the trained model folder")
    parser.add_argument("--card", required=True, help="its model card (rule model_card)")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    record = push(Path(args.model), Path(args.card), args.repo, args.private)
    write_json(args.output, record)
    print(f"pushed {args.model} to {record['url']}")


if __name__ == "__main__":
    run_cli(main)
