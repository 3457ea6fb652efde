"""Resumable stages: work done shard by shard, each shard kept on disk until the whole output exists.

A killed job restarts where it stopped: finished shards are read back, not redone. The shards live
in a hidden folder beside the output with a fingerprint of everything the work depends on; a
different fingerprint (new params, data or model) discards them. The output file appears only
when whole, and the shards are removed then.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .io import read_json, read_jsonl, write_json, write_jsonl


def shard_folder(output: str | Path) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.shards"


def run_in_shards(output: str | Path, items: list, work: Callable[[list], list[dict]], fingerprint: dict,
                  shard_size: int, desc: str, finish: Callable[[list[dict]], None] | None = None
                  ) -> tuple[list[dict], int]:
    """Apply `work` to consecutive shards of `items`; write all records to `output` as JSONL, or hand
    them to `finish` (which writes the stage's outputs) before the shards are removed.

    Returns the records and the number of shards that were resumed from disk.
    """
    folder = shard_folder(output)
    meta = folder / "fingerprint.json"
    if folder.exists() and (not meta.exists() or read_json(meta) != fingerprint):
        shutil.rmtree(folder)
    if not meta.exists():
        write_json(meta, fingerprint)
    records, resumed = [], 0
    with tqdm(total=len(items), desc=desc, mininterval=5) as bar:
        for start in range(0, len(items), shard_size):
            chunk = items[start: start + shard_size]
            path = folder / f"shard{start // shard_size:06d}.jsonl"
            if path.exists():
                done = read_jsonl(path)
                resumed += 1
            else:
                done = work(chunk)
                write_jsonl(path, done)
            records.extend(done)
            bar.update(len(chunk))
    (finish or (lambda done: write_jsonl(output, done)))(records)
    shutil.rmtree(folder)
    return records, resumed
