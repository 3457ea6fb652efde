"""A run's training records tokenised once, memory-mapped by every process and every epoch.

The main process renders and tokenises each record's prompt and every response the run reads (the chosen
one and its negatives) once, into a folder beside the checkpoints: `ids.bin` (the token ids, int32, flat),
`bounds.npy` (int64 segment boundaries: per record the prompt, the chosen response, then the negatives),
`truncated.npy` (which responses the recipe's truncation cuts) and the fingerprint of the tokenizer, data
and settings they were made with. Every process maps them read-only and joins a batch's examples from
them (`encoding.join_example`, the code the reference cache uses), so memory holds one batch's token lists,
not the dataset's, no epoch tokenises again, and a resumed run reads them back. The records stream through
the encoding one at a time; a process keeps only their keys (id and label).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .encoding import Example, join_example, record_segments
from .io import InputError, atomic_path, write_json
from .shards import recorded_fingerprint


class EncodedRecords:
    """Token segments of every record (`width` = 2 + negatives per record), read from the memory-mapped files;
    `keys`: each record's (id, label), in the file's order."""

    def __init__(self, folder: Path, keys: list[tuple], settings: dict, kl_pairs: bool, source: str):
        self.ids = np.memmap(folder / "ids.bin", dtype=np.int32, mode="r")
        self.bounds = np.load(folder / "bounds.npy", mmap_mode="r")
        self.truncated = np.load(folder / "truncated.npy")
        self.width = self.truncated.shape[1] + 1
        self.keys = keys
        self.settings, self.kl_pairs, self.source = settings, kl_pairs, source

    def __len__(self) -> int:
        return len(self.keys)

    def segments(self, i: int) -> list[list[int]]:
        b = self.bounds[i * self.width: (i + 1) * self.width + 1]
        return [self.ids[b[s]: b[s + 1]].tolist() for s in range(self.width)]

    def example(self, i: int, columns: list[int]) -> Example:
        previous = self.segments((i - 1) % len(self)) if self.kl_pairs else None
        return join_example(*self.keys[i], self.segments(i), previous, columns, self.settings, self.source, i + 1)

    def responses_truncated(self, columns: list[int]) -> int:
        """Responses an epoch reading negatives `columns` truncates (chosen ones included)."""
        return int(self.truncated[:, [0, *(1 + c for c in columns)]].sum())


def _changed(source: str, count, n_records: int) -> InputError:
    return InputError(source, f"holds {count} records where the run's first pass read {n_records}: the file "
                      "changed while the run read it")


def encode_once(folder: Path, fingerprint: dict, tokenizer, records: Iterable[dict], n_records: int, n_negatives: int,
                settings: dict, kl_pairs: bool, source: str) -> bool:
    """Write the `n_records` encoded records (read as they stream) into `folder` unless it holds them under the
    same fingerprint; every example the run can build is joined once here, so a prompt the recipe refuses stops
    the run before it trains. Returns whether it encoded."""
    if recorded_fingerprint(folder / "fingerprint.json") == fingerprint:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    width, columns = 2 + n_negatives, list(range(n_negatives))
    bounds, truncated = np.zeros(n_records * width + 1, dtype=np.int64), np.zeros((n_records, width - 1), bool)
    segments, first, first_id, count = None, None, None, 0
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        with open(tmp / "ids.bin", "wb") as ids:
            for i, record in enumerate(records):
                if i == n_records:
                    raise _changed(source, f"more than {n_records}", n_records)
                count, previous, segments = i + 1, segments, record_segments(tokenizer, record, n_negatives, settings)
                first, first_id = first or segments, first_id or record["id"]
                example = join_example(record["id"], record.get("label"), segments, previous if kl_pairs else None,
                                       columns, settings, source, i + 1)
                truncated[i] = [e.truncated for e in example.rows]
                for s, segment in enumerate(segments):
                    ids.write(np.asarray(segment, dtype=np.int32).tobytes())
                    bounds[i * width + s + 1] = bounds[i * width + s] + len(segment)
        if count != n_records:
            raise _changed(source, count, n_records)
        if kl_pairs:  # the first record's mismatched rows read the last record
            join_example(first_id, None, first, segments, columns, settings, source, 1)
        np.save(tmp / "bounds.npy", bounds)
        np.save(tmp / "truncated.npy", truncated)
        write_json(tmp / "fingerprint.json", fingerprint)
    return True
