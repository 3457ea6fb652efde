"""Pinned hub revisions: the placeholder a config holds until `pin_revisions` writes the commit in, and the
check that refuses to load a repo at it."""
from __future__ import annotations

from .io import InputError

UNRESOLVED = "UNRESOLVED"


def require_pinned(revision: str | None, repo: str) -> None:
    """Refuse to load a hub repo at the UNRESOLVED placeholder (it has no commit to load)."""
    if revision == UNRESOLVED:
        raise InputError(repo, "its revision is UNRESOLVED: pin it first, on a machine that reaches the hub "
                               "(python -m workflow_scripts.pin_revisions <config>)", field="revision")
