"""Atomic file output, validated JSONL input and content digests.

A JSON or JSONL artifact (and a model folder) has its digest recorded beside it when written,
`<name>.sha256` in sha256sum's format, and every reader checks it: a file changed or cut after
it was written is refused, never used. A file without a record (a user's own data) is read as is.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


class InputError(Exception):
    """Bad input: the message names the file, the line and the field."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path) if tmp.is_file() else _replace_dir(tmp, path)
    finally:
        _remove(tmp)


def _replace_dir(tmp: Path, path: Path) -> None:
    _remove(path)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write a JSON file atomically and record its digest beside it."""
    blob = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    forget_digest(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    record_digest(path, hashlib.sha256(blob).hexdigest())


def digest_record(path: str | os.PathLike) -> Path:
    return Path(f"{path}.sha256")


def forget_digest(path: str | os.PathLike) -> None:
    """Drop `path`'s digest record before `path` is rewritten (a kill in between leaves it unchecked, not refused)."""
    _remove(digest_record(path))


def record_digest(path: str | os.PathLike, digest: str) -> None:
    with atomic_path(digest_record(path)) as tmp:
        tmp.write_text(f"{digest}  {Path(path).name}\n")


def recorded_digest(path: str | os.PathLike) -> str | None:
    """The digest recorded beside `path` when it was written, or None when nothing was recorded."""
    record = digest_record(path)
    return (record.read_text().split() or [""])[0] if record.is_file() else None


def check_digest(path: str | os.PathLike, digest: str) -> None:
    """`digest` (of `path`'s content) must be the one recorded when `path` was written, where one was."""
    recorded = recorded_digest(path)
    if recorded is not None and recorded != digest:
        raise InputError(path, f"the content (sha256 {digest[:16]}) is not what was written (sha256 "
                         f"{recorded[:16]}, {digest_record(path).name}): it was changed or cut afterwards; delete it "
                         f"and rerun snakemake, which rebuilds it")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically, one JSON object a line, and record the file's digest beside it. `records` may
    be a stream that fails mid-way: then neither an earlier file at `path` nor its digest record is touched."""
    n, h = 0, hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for record in records:
            line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()
            f.write(line)
            h.update(line)
            n += 1
        forget_digest(path)  # the old record goes only when the new content is whole
    record_digest(path, h.hexdigest())
    return n


def write_eval(path: str | os.PathLike, result: dict, samples: Iterable[dict]) -> None:
    """An eval's JSON and, beside it, its per-sample records (`<name>.samples.jsonl`); the JSON last."""
    write_jsonl(str(path).removesuffix(".json") + ".samples.jsonl", samples)
    write_json(path, result)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content, its recorded digest checked."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    check_digest(path, hashlib.sha256(blob).hexdigest())
    try:
        return json.loads(blob.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text (byte {e.start + 1})") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg}", line=e.lineno) from None


def read_jsonl(path: str | os.PathLike, validate: Callable[[dict, Callable[..., InputError]], None] | None = None) -> list[dict]:
    """Read a JSONL file (UTF-8, a BOM allowed; blank lines skipped; line numbers are the file's) and check its
    recorded digest; `validate(record, error)` raises `error(message, field)` on a bad record."""
    return [record for _, record in read_jsonl_numbered(path, validate)]


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """read_jsonl's records one at a time (memory of one record)."""
    return (record for _, record in iter_jsonl_numbered(path))


def read_jsonl_numbered(path: str | os.PathLike,
                        validate: Callable[[dict, Callable[..., InputError]], None] | None = None) -> list[tuple[int, dict]]:
    """read_jsonl's records with the file's line number of each."""
    return list(iter_jsonl_numbered(path, validate))


def iter_jsonl_numbered(path: str | os.PathLike, validate: Callable[[dict, Callable[..., InputError]], None] | None = None
                        ) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSONL file one at a time (memory of one record); the recorded digest is
    checked when the file has been read to its end, before the iteration ends."""
    h = hashlib.sha256()
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            h.update(raw)
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not UTF-8 text (byte {e.start + 1} of the line: {raw[e.start:e.start + 1]!r})",
                                 line=lineno) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, f"invalid JSON ({e.msg})", line=lineno) from None
            if not isinstance(record, dict):
                raise InputError(path, "a record must be a JSON object", line=lineno)
            if validate is not None:
                validate(record, lambda message, field=None, _l=lineno: InputError(path, message, _l, field))
            yield lineno, record
    check_digest(path, h.hexdigest())


def require_unique_ids(path: str | os.PathLike, records: list[dict]) -> None:
    seen: dict[str, int] = {}
    for lineno, record in enumerate(records, start=1):
        if record["id"] in seen:
            raise InputError(path, f"duplicate id {record['id']!r} (first on line {seen[record['id']]})", lineno, "id")
        seen[record["id"]] = lineno


def seed_files(paths: list[str]) -> dict[int, str]:
    """Per-seed files by seed: each must be named seed<N>.jsonl."""
    out = {}
    for path in paths:
        name = os.path.basename(path)
        if not (name.startswith("seed") and name.endswith(".jsonl") and name[4:-6].isdigit()):
            raise InputError(path, "a per-seed file must be named seed<N>.jsonl")
        out[int(name[4:-6])] = path
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> list[str]:
    """sha256 of each file, several at once (hashlib releases the GIL): checkpoint shards of a 7B run are ~100 GB."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(sha256_file, paths))


def sha256_tree(path: str | os.PathLike, pattern: str = "*") -> str:
    """Digest of a file, or of a directory's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    return combine_digests((f.relative_to(path), sha256_file(f)) for f in sorted(path.rglob(pattern)) if f.is_file())


WEIGHT_SUFFIXES = (".safetensors", ".bin")  # the files from_pretrained loads weights from (safetensors, PyTorch's)


def is_weight_file(name: str) -> bool:
    """Whether a model folder's file holds weights (what models.weights_digest covers)."""
    return name.endswith(WEIGHT_SUFFIXES)


def combine_digests(files: Iterable[tuple[Path, str]]) -> str:
    """A folder's digest from its files' (relative path, sha256), in path order (what sha256_tree hashes)."""
    h = hashlib.sha256()
    for name, digest in files:
        h.update(str(name).encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def run_cli(main: Callable[[list[str] | None], None]) -> None:
    """Run a stage's main; bad input exits with status 2 and a one-line message."""
    try:
        main(None)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
