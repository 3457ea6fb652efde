"""Provenance manifest: git commit, package versions, resolved config and every artifact's digest."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from .io import read_json, run_cli, sha256_file, write_json
from .versions import package_versions

SKIPPED_PARTS = {"checkpoints", "logs", "benchmarks", "tracking"}  # tracking: the trackers' own logs


def git_state(root: str) -> dict:
    def git(*cmd):
        return subprocess.run(["git", "-C", root, *cmd], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def artifact_digests(results: str) -> dict[str, str]:
    """sha256 of every file under the results folder, except checkpoints, logs (the trackers' too), benchmarks, the
    manifest and the digest records beside the artifacts (`*.sha256`, which the manifest's own digests cover)."""
    root = Path(results)
    return {str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*"))
            if path.is_file() and is_artifact(path.relative_to(root))}


def is_artifact(rel: Path) -> bool:
    """Whether a path under the results folder is a workflow artifact (not a checkpoint, log, benchmark, hidden
    work folder, the manifest itself or a digest record)."""
    return not (SKIPPED_PARTS & set(rel.parts) or any(p.startswith(".") for p in rel.parts)
                or rel.name == "manifest.json" or rel.suffix == ".sha256")


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="a JSON file: the resolved config")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    digests = artifact_digests(str(Path(args.output).parent))
    write_json(args.output, {"git": git_state(str(Path(__file__).resolve().parents[1])), "versions": package_versions(),
                             "config": read_json(args.config), "artifacts": digests})
    print(f"manifest: {len(digests)} artifacts")


if __name__ == "__main__":
    run_cli(main)
