"""Which files under the results folder are the workflow's artifacts, and their digests (what the manifest
records and `verify` checks again)."""
from __future__ import annotations

from pathlib import Path

from .io import sha256_file

SKIPPED_PARTS = {"checkpoints", "logs", "benchmarks", "tracking"}  # tracking: the trackers' own logs


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
