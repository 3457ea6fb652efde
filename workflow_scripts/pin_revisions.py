"""Pin a config's UNRESOLVED hub revisions: `python -m workflow_scripts.pin_revisions CONFIG`.

A config may name a hub model or dataset whose commit is not known where the config was written (the
hub was out of reach) with `revision: UNRESOLVED`. It plans like any other, and any job that would load
such a repo refuses to (`require_pinned`). On a machine that reaches the hub (a login node), this command
asks the hub for the commit each such repo's `main` branch points to now and writes it into the config
file in place (the line's comment kept), printing each change; `--ref` names another branch or tag.
Nothing else in the file changes. The key of a gated repo comes from HF_TOKEN, as for any download.
"""
from __future__ import annotations

import argparse
import re
import sys

import yaml

from .io import InputError, atomic_path
from .revisions import UNRESOLVED

SECTIONS = {"models": "model", "datasets": "dataset"}
ENTRY = re.compile(r"^  ([A-Za-z0-9_]+):")
REVISION = re.compile(rf"^(\s+revision:\s*){UNRESOLVED}\b")


def unresolved(lines: list[str]) -> list[tuple[int, str, str]]:
    """(line index, section, entry name) of every UNRESOLVED revision under `models:` or `datasets:`."""
    out, section, entry = [], None, None
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z_]", line):
            section, entry = line.split(":", 1)[0], None
        elif m := ENTRY.match(line):
            entry = m[1]
        elif REVISION.match(line) and section in SECTIONS and entry:
            out.append((i, section, entry))
    return out


def resolve(kind: str, repo: str, ref: str) -> str:
    """The commit a branch or tag of a hub repo points to now."""
    from huggingface_hub import HfApi

    info = (HfApi().model_info if kind == "model" else HfApi().dataset_info)(repo, revision=ref)
    return info.sha


def pin(path: str, ref: str = "main") -> list[str]:
    """Write the commits of the config's UNRESOLVED revisions into the file; the changes, one line each."""
    from huggingface_hub.errors import HfHubHTTPError

    with open(path) as f:
        text = f.read()
    config, lines = yaml.safe_load(text), text.splitlines(keepends=True)
    changes = []
    for i, section, entry in unresolved(lines):
        repo = config[section][entry]["hf_id"]
        try:
            sha = resolve(SECTIONS[section], repo, ref)
        except HfHubHTTPError as e:
            raise InputError(path, f"the hub has no {repo}@{ref} ({type(e).__name__}); nothing was written", i + 1,
                             f"{section}.{entry}") from None
        if not re.fullmatch(r"[0-9a-f]{40}", sha or ""):
            raise InputError(path, f"the hub gave no commit for {repo}@{ref}: {sha!r}", i + 1, f"{section}.{entry}")
        lines[i] = REVISION.sub(rf"\g<1>{sha}", lines[i])
        changes.append(f"{path}:{i + 1}: {section}.{entry} ({repo}@{ref}) -> {sha}")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines))
    return changes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--ref", default="main", help="the branch or tag to pin (default: main)")
    args = parser.parse_args(argv)
    try:
        changes = pin(args.config, args.ref)
    except InputError as e:
        sys.exit(f"error: {e}")
    print("\n".join(changes) if changes else f"{args.config}: no UNRESOLVED revision")


if __name__ == "__main__":
    main()
