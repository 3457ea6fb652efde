"""Resumable stages: work done shard by shard, each shard kept on disk until the whole output exists.

A killed job restarts where it stopped: finished shards are read back, not redone. The shards live
in a hidden folder beside the output with a fingerprint of everything the work depends on; a
different fingerprint (new params, data or model) discards them. The output file appears only
when whole, and the shards are removed then.
"""
from __future__ import annotations

import shutil
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from .io import InputError, iter_jsonl, read_json, read_jsonl, write_json, write_jsonl


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
    records: list[dict] = []

    def collect(read: Callable[[], Iterator[dict]]) -> None:
        records.extend(read())
        (finish or (lambda done: write_jsonl(output, done)))(records)

    chunks = (items[start: start + shard_size] for start in range(0, len(items), shard_size))
    return records, stream_in_shards(output, chunks, len(items), work, fingerprint, desc, collect)


def stream_in_shards(output: str | Path, chunks: Iterable[list], total: int | None,
                     work: Callable[[list], list[dict]], fingerprint: dict, desc: str,
                     finish: Callable[[Callable[[], Iterator[dict]]], None]) -> int:
    """Apply `work` to each chunk as it comes (a stage streaming its input holds one shard); then `finish(read)`
    writes the stage's outputs, `read()` streaming every record back from the shards in order, and the shards
    are removed. Returns the number of shards resumed from disk."""
    folder = kept_folder(shard_folder(output), fingerprint)
    paths, resumed = [], 0
    with tqdm(total=total, desc=desc, mininterval=5) as bar:
        for index, chunk in enumerate(chunks):
            path = folder / f"shard{index:06d}.jsonl"
            if _finished_shard(path) is not None:
                resumed += 1
            else:
                write_jsonl(path, work(chunk))
            paths.append(path)
            bar.update(len(chunk))
    finish(lambda: (record for path in paths for record in iter_jsonl(path)))
    shutil.rmtree(folder)
    return resumed


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter), taken from a stream as they are needed."""
    stream = iter(items)
    while batch := list(islice(stream, size)):
        yield batch


def _finished_shard(path: Path) -> list[dict] | None:
    """A shard's records, or None when it is still to do (absent, or damaged: then it is redone)."""
    if not path.exists():
        return None
    try:
        return read_jsonl(path)
    except InputError as e:
        print(f"shard redone: {e}", flush=True)
        return None


def kept_folder(folder: Path, fingerprint) -> Path:
    """The folder of a job's finished work, emptied first when that work was done under another fingerprint
    (other settings, data or model), or its record of it is damaged."""
    meta = folder / "fingerprint.json"
    if folder.exists() and recorded_fingerprint(meta) != fingerprint:
        shutil.rmtree(folder)
    if not meta.exists():
        write_json(meta, fingerprint)
    return folder


def recorded_fingerprint(meta: Path) -> dict | None:
    """The fingerprint a folder of finished work records, or None when it is absent or damaged."""
    try:
        return read_json(meta)
    except InputError:
        return None
