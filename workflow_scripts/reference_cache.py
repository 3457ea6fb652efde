"""The reference log-prob cache as training reads it: the digests a cache must match (its reference weights,
tokenizer + chat template, data and encoding settings) and the reader, which refuses a cache that does not
match or whose tensors changed after they were written (the stage that builds it: workflow_scripts/refcache.py)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .io import InputError, read_json, sha256_file
from .models import tokenizer_digest, weights_digest

SETTINGS = ("max_length", "max_prompt_length", "prompt_format", "response_format", "token_level", "kl_pairs")


def expected_digests(model: str, revision: str | None, data_digest: str, settings: dict,
                     chat_template: str | None = None) -> dict:
    """What a cache depends on (`data_digest`: the sha256 of its data file, which the caller has hashed)."""
    return {
        "reference_weights": weights_digest(model, revision),
        "tokenizer": tokenizer_digest(model, revision, chat_template),
        "data": data_digest,
        "settings": json.dumps({k: settings.get(k) for k in SETTINGS}, sort_keys=True),
    }


class RefCache:
    """Cached reference log-probs, checked against the digests of the caller's inputs."""

    def __init__(self, path: str, expected: dict):
        meta_path = path.removesuffix(".safetensors") + ".json"
        meta = read_json(meta_path)
        for key, value in expected.items():
            if meta["digests"].get(key) != value:
                raise InputError(meta_path, f"reference cache does not match this run: the {key} digest differs "
                                 f"(cache {meta['digests'].get(key)!r}, run {value!r}); rebuild the cache",
                                 field=f"digests.{key}")
        self.sha256 = sha256_file(path)
        if meta.get("sha256") != self.sha256:
            raise InputError(path, f"the tensors (sha256 {self.sha256[:16]}) are not the ones {Path(meta_path).name} "
                             f"records ({str(meta.get('sha256'))[:16]}): changed or cut after they were written; "
                             f"delete both and rerun snakemake, which rebuilds the cache")
        self.tensors = load_file(path)
        self.row = {id_: i for i, id_ in enumerate(meta["ids"])}
        self.path = path
        if "token_logps" in self.tensors:
            self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.tensors["token_counts"].flatten().cumsum(0)])

    def _columns(self, columns: list[int]) -> list[int]:
        """Cache columns of (chosen, negatives in `columns`); the cache holds only what its runs read."""
        held = self.tensors["sums"].shape[1] - 1
        if columns and max(columns) >= held:
            raise InputError(self.path, f"the cache holds {held} negatives per example; this run reads negative "
                             f"{max(columns)}; rebuild the cache", field="sums")
        return [0] + [c + 1 for c in columns]

    def _rows(self, ids: list[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.row[i] for i in ids])
        except KeyError as e:
            raise InputError(self.path, f"id {e.args[0]!r} is not in the reference cache", field="ids") from None

    def sums(self, ids: list[str], columns: list[int]) -> torch.Tensor:
        """[B, 1 + len(columns)]: l_ref of the chosen response and of the negatives in `columns`."""
        return self.tensors["sums"][self._rows(ids)][:, self._columns(columns)]

    def kl_sums(self, ids: list[str], columns: list[int]) -> torch.Tensor:
        return self.tensors["kl_sums"][self._rows(ids)][:, self._columns(columns)]

    def tokens(self, ids: list[str], columns: list[int], mask: torch.Tensor) -> torch.Tensor:
        """Per-token l_ref laid out like the policy's [B, K, T] `mask`."""
        out = torch.zeros(mask.shape, dtype=torch.float32)
        width = self.tensors["token_counts"].shape[1]
        for b, row in enumerate(self._rows(ids).tolist()):
            for k, col in enumerate(self._columns(columns)):
                flat = row * width + col
                values = self.tensors["token_logps"][self.offsets[flat]: self.offsets[flat + 1]]
                positions = mask[b, k].nonzero().flatten().cpu()
                if len(values) != len(positions):
                    raise InputError(self.path, f"id {ids[b]!r} response {col}: {len(values)} cached tokens, "
                                     f"{len(positions)} in training", field="token_counts")
                out[b, k, positions] = values
        return out
