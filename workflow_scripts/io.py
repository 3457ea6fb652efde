"""Atomic file output, validated JSONL input and content digests."""
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
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def write_eval(path: str | os.PathLike, result: dict, samples: Iterable[dict]) -> None:
    """An eval's JSON and, beside it, its per-sample records (`<name>.samples.jsonl`); the JSON last."""
    write_jsonl(str(path).removesuffix(".json") + ".samples.jsonl", samples)
    write_json(path, result)


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg}", line=e.lineno) from None
    except FileNotFoundError:
        raise InputError(path, "file not found") from None


def read_jsonl(path: str | os.PathLike, validate: Callable[[dict, Callable[..., InputError]], None] | None = None) -> list[dict]:
    """Read a JSONL file; `validate(record, error)` raises `error(message, field)` on a bad record."""
    records = []
    try:
        f = open(path)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    with f:
        for lineno, line in enumerate(f, start=1):
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
            records.append(record)
    return records


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


def sha256_tree(path: str | os.PathLike, pattern: str = "*") -> str:
    """Digest of a file, or of a directory's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob(pattern) if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def run_cli(main: Callable[[list[str] | None], None]) -> None:
    """Run a stage's main; bad input exits with status 2 and a one-line message."""
    try:
        main(None)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
