"""Versions of the packages that produce the numbers."""
from __future__ import annotations

from importlib import metadata

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "trl", "safetensors",
            "lm_eval", "alpaca_eval", "vllm", "deepspeed", "snakemake", "pandas", "numpy", "sympy", "scikit-learn",
            "openai")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
