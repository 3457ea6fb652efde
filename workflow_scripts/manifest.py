"""Provenance manifest: git commit, package versions, resolved config and every artifact's digest."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from .artifacts import artifact_digests
from .io import read_json, run_cli, write_json
from .versions import package_versions


def git_state(root: str) -> dict:
    def git(*cmd):
        return subprocess.run(["git", "-C", root, *cmd], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


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
