"""Check every artifact of a results folder against what was recorded when it was written (`make verify`).

- each `<name>.sha256` beside a JSON or JSONL file or a model folder (the folder's weight files);
- each reference cache's tensors against the sha256 in its `.json`;
- with `--manifest`, every artifact the manifest lists (changed or missing since it was written).

Prints one line per problem and exits 1 when there is any; nothing is modified.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .artifacts import artifact_digests, is_artifact
from .io import combine_digests, is_weight_file, read_json, recorded_digest


def recorded_problems(results: Path, digests: dict[str, str]) -> list[str]:
    """Artifacts whose content is not the digest recorded beside them (or in a cache's `.json`); `digests` are
    the artifacts' own (`artifacts.artifact_digests`), so nothing is hashed twice."""
    problems = []
    for record in sorted(results.rglob("*.sha256")):
        rel = record.relative_to(results).with_suffix("")
        artifact = results / rel
        if not is_artifact(rel) or not artifact.exists():
            continue  # a shard's, or left by an artifact Snakemake removed before rebuilding it
        digest = folder_digest(digests, rel) if artifact.is_dir() else digests[str(rel)]
        if digest != recorded_digest(artifact):
            problems.append(f"{artifact}: not the content recorded in {record.name}")
    for meta in sorted((results / "refcache").glob("*.json")):
        tensors = meta.with_suffix(".safetensors")
        if tensors.is_file() and digests[str(tensors.relative_to(results))] != read_json(meta).get("sha256"):
            problems.append(f"{tensors}: not the tensors recorded in {meta.name}")
    return problems


def folder_digest(digests: dict[str, str], folder: Path) -> str:
    """A model folder's weights digest (models.weights_digest) from its files' digests."""
    files = sorted((Path(name).relative_to(folder), d) for name, d in digests.items()
                   if name.startswith(f"{folder}/") and is_weight_file(name))
    return combine_digests(files)


def manifest_problems(digests: dict[str, str], results: Path, manifest: Path) -> list[str]:
    """Artifacts changed or missing since the manifest was written."""
    listed = read_json(manifest)["artifacts"]
    return [f"{results / name}: " + ("missing" if name not in digests else "changed") + f" since {manifest.name}"
            for name, digest in sorted(listed.items()) if digests.get(name) != digest]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--manifest", default=None, help="also compare with this manifest (results/manifest.json)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    digests = artifact_digests(str(results))
    problems = recorded_problems(results, digests)
    if args.manifest:
        problems += manifest_problems(digests, results, Path(args.manifest))
    for line in problems:
        print(line)
    print(f"{len(problems)} problems" if problems else f"every recorded artifact under {results} is as written")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
