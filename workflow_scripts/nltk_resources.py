"""NLTK's punkt_tab as the lm-eval stage needs it (IFEval's checkers): which tasks need it, and where it is
(rule nltk_data fetches it: workflow_scripts/nltk_data.py)."""
from __future__ import annotations

import os

from .io import InputError, sha256_tree

RESOURCE = "tokenizers/punkt_tab"


def needs_punkt(task: str) -> bool:
    """Whether an lm-eval task runs IFEval's checkers (ifeval, leaderboard_ifeval, the multilingual ones)."""
    return "ifeval" in task


def require(nltk_dir: str | None) -> str:
    """Point NLTK (and the processes it starts) at `nltk_dir` and return punkt_tab's digest; refuse
    clearly when punkt_tab is not there (lm-eval would try to download it, and fail without internet)."""
    import nltk

    if nltk_dir:
        os.environ["NLTK_DATA"] = os.path.abspath(nltk_dir)
        nltk.data.path.insert(0, os.environ["NLTK_DATA"])
    try:
        found = nltk.data.find(RESOURCE)
    except LookupError:
        raise InputError(nltk_dir or "NLTK_DATA", f"IFEval needs NLTK's {RESOURCE}, which is not there: the rule "
                         "nltk_data writes it (python -m workflow_scripts.nltk_data)") from None
    return sha256_tree(found.zipfile.filename if hasattr(found, "zipfile") else found.path)  # a folder or NLTK's .zip
