"""Check every artifact of a results folder against what was recorded when it was written (`make verify`).

- each `<name>.sha256` beside a JSONL file or a model folder (the folder's safetensors);
- each reference cache's tensors against the sha256 in its `.json`;
- with `--manifest`, every artifact the manifest lists (changed or missing since it was written).

Prints one line per problem and exits 1 when there is any; nothing is modified.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .io import sha256_file, sha256_tree
from .manifest import artifact_digests


def recorded_problems(results: Path) -> list[str]:
    """Artifacts whose content is not the digest recorded beside them (or in a cache's `.json`)."""
    problems = []
    for record in sorted(results.rglob("*.sha256")):
        artifact = record.with_name(record.name.removesuffix(".sha256"))
        if not artifact.exists():
            continue  # a record left by an artifact Snakemake removed before rebuilding it
        digest = sha256_tree(artifact, "*.safetensors") if artifact.is_dir() else sha256_file(artifact)
        if digest != (record.read_text().split() or [""])[0]:
            problems.append(f"{artifact}: not the content recorded in {record.name}")
    for meta in sorted((results / "refcache").glob("*.json")):
        tensors = meta.with_suffix(".safetensors")
        if tensors.is_file() and sha256_file(tensors) != json.loads(meta.read_text()).get("sha256"):
            problems.append(f"{tensors}: not the tensors recorded in {meta.name}")
    return problems


def manifest_problems(results: Path, manifest: Path) -> list[str]:
    """Artifacts changed or missing since the manifest was written."""
    listed = json.loads(manifest.read_text())["artifacts"]
    now = artifact_digests(str(results))
    return [f"{results / name}: " + ("missing" if name not in now else "changed") + f" since {manifest.name}"
            for name, digest in sorted(listed.items()) if now.get(name) != digest]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--manifest", default=None, help="also compare with this manifest (results/manifest.json)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    problems = recorded_problems(results)
    if args.manifest:
        problems += manifest_problems(results, Path(args.manifest))
    for line in problems:
        print(line)
    print(f"{len(problems)} problems" if problems else f"every recorded artifact under {results} is as written")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
