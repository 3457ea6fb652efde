"""Safety: a model's own code runs only when its config entry allows it; nothing is unpickled."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from workflow_scripts import checkpoint
from workflow_scripts.models import load_model

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests/configs/mini.yaml"


@pytest.fixture()
def custom_code_model(tiny_world, tmp_path):
    """The tiny model with `auto_map` pointing at a modeling file of its own (as hub models with custom code do)."""
    model_dir = tmp_path / "custom"
    src = Path(tiny_world[0])
    model_dir.mkdir()
    for f in src.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLlama"}
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "modeling_custom.py").write_text(  # leaves a mark when it is executed
        "from pathlib import Path\n\nfrom transformers import LlamaForCausalLM\n\n"
        "from .configuration_custom import CustomConfig\n\n"
        f"Path({str(model_dir / 'RAN')!r}).write_text('imported')\n\n\n"
        "class CustomLlama(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    (model_dir / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n")
    return model_dir


def test_a_models_own_code_runs_only_when_allowed(custom_code_model):
    model = load_model(str(custom_code_model))  # a known architecture: transformers' own class, no import
    assert type(model).__name__ == "LlamaForCausalLM" and not (custom_code_model / "RAN").exists()
    config = json.loads((custom_code_model / "config.json").read_text())
    config["model_type"] = "custom_llama"  # an architecture only its own code knows: refused, not run
    config["auto_map"]["AutoConfig"] = "configuration_custom.CustomConfig"
    (custom_code_model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(custom_code_model))
    assert not (custom_code_model / "RAN").exists()
    model = load_model(str(custom_code_model), trust_remote_code=True)
    assert type(model).__name__ == "CustomLlama" and (custom_code_model / "RAN").exists()


def dry_run_commands(tmp_path, trust: bool) -> list[str]:
    config = yaml.safe_load(MINI.read_text())
    config["models"]["mini"]["trust_remote_code"] = trust
    path = tmp_path / f"trust{trust}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(["timeout", "-k", "10", "300", sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                          "-d", str(tmp_path), "-n", "-p", "--configfile", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return re.findall(r"^Shell command: (.*)$", out.stdout + out.stderr, re.M)


def test_trust_remote_code_reaches_every_stage_only_from_the_config(tmp_path):
    loading = re.compile(r"workflow_scripts\.(generate|step_controlled generate|refcache|train|evaluate) ")
    off = [c for c in dry_run_commands(tmp_path, False) if loading.search(c)]
    on = [c for c in dry_run_commands(tmp_path, True) if loading.search(c)]
    assert len(off) == len(on) > 20
    assert not any("--trust-remote-code" in c for c in off)
    assert all("--trust-remote-code" in c for c in on)


def test_nothing_is_unpickled():
    """No pickle in the package; checkpoints restore through torch.load(weights_only=True) only."""
    for path in (ROOT / "workflow_scripts").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\bpickle\b|torch\.load\(|weights_only\s*=\s*False", text), path


def test_checkpoint_restore_loads_with_weights_only(tmp_path, monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    path = checkpoint.save(accelerator, str(tmp_path), 1, {"fingerprint": "f"}, {"u": torch.zeros(3)}, keep=1)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state, method_state = checkpoint.load(accelerator, path)
    assert state["step"] == 1 and method_state["u"].shape == (3,)
    assert calls and all(flag is True for flag in calls), calls
