"""Model cards (workflow_scripts/model_card.py) and the push of a trained model with its card to the hub
(workflow_scripts/push_model.py), against a hub API on loopback."""
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from loopback_api import LoopbackAPI
from test_workflow import snakemake, write_config

ROOT = Path(__file__).resolve().parents[1]
OID = "0123456789abcdef0123456789abcdef01234567"


def hub(base, method, path, body):
    """The hub's answers (the hub at `base`) to create_repo, validate-yaml, preupload (every file a regular
    upload) and commit."""
    if path == "/api/repos/create":
        return {"url": f"{base}/{body['organization']}/{body['name']}"}
    if path == "/api/validate-yaml":
        return {"errors": [], "warnings": []}
    if path.endswith("/preupload/main"):
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]}
    if path.endswith("/commit/main"):
        return {"commitUrl": f"{base}/org/model/commit/{OID}", "commitOid": OID}
    return None


def test_a_push_is_one_commit_of_the_model_and_its_card_with_the_revision_recorded(tiny_world, tmp_path):
    model = Path(tiny_world[0])
    card = tmp_path / "model_card.md"
    card.write_text("---\nlibrary_name: transformers\n---\n\n# the whole card\n")
    where = {}
    api = LoopbackAPI(lambda method, path, body: hub(where["base"], method, path, body))
    where["base"] = api.url
    env = dict(os.environ, HF_ENDPOINT=api.url, HF_TOKEN="hf_FAKEpushtoken", HF_HUB_OFFLINE="0", PYTHONPATH=str(ROOT))
    out = tmp_path / "pushed.json"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.push_model", "--model", str(model), "--card", str(card),
                           "--repo", "org/model", "--private", "--output", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    created = next(r for r in api.requests if r["path"] == "/api/repos/create")
    assert created["body"] == {"name": "model", "organization": "org", "visibility": "private"}
    commits = [r for r in api.requests if r["path"].endswith("/commit/main")]
    assert len(commits) == 1 and commits[0]["auth"] == "Bearer hf_FAKEpushtoken"  # the token from the environment
    pushed = {op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in commits[0]["body"] if op["key"] == "file"}
    expected = {p.name for p in model.iterdir() if p.is_file() and not p.name.startswith(".")} | {"README.md"}
    assert set(pushed) == expected and pushed["README.md"] == card.read_bytes()
    assert pushed["model.safetensors"] == (model / "model.safetensors").read_bytes()
    record = json.loads(out.read_text())
    assert record["revision"] == OID and record["repo_id"] == "org/model" and set(record["files"]) == expected


def test_the_push_rule_plans_only_when_asked_and_with_a_repo(mini_run, tmp_path):
    """Never part of `all`; a push target without `push.repo` is refused before any job; with it, one
    push job after the instance's model card, its token never on the command line."""
    workdir, config_path = mini_run
    target = "results/pushed/dft/seed42.json"
    refused = snakemake(workdir, "-n", target, "--configfile", config_path)
    assert refused.returncode != 0 and "config push.repo is not set" in refused.stdout + refused.stderr
    config = {**yaml.safe_load(Path(config_path).read_text()),
              "push": {"repo": "my-org/{run}-seed{seed}"}}
    planned = snakemake(workdir, "-n", "-p", target, "--configfile", write_config(tmp_path / "push.yaml", config))
    text = planned.stdout + planned.stderr
    assert planned.returncode == 0, text[-3000:]
    assert "--repo my-org/dft-seed42 --private" in text and "hf_" not in text
    assert "push" not in snakemake(workdir, "-n", "--configfile", config_path).stdout  # `all` pushes nothing


def test_every_trained_instance_has_its_card_with_its_scores(mini_run):
    workdir, _ = mini_run
    res = workdir / "results"
    runs = list(res.glob("train/*/seed*/run.json"))
    assert len(runs) == 14
    for run_json in runs:
        run = json.loads(run_json.read_text())
        card = ModelCard.load(run_json.parent / "model_card.md")
        assert card.data.model_name == f"{run['run']}/seed{run['seed']}" and run["method"] in card.data.tags
        assert f"final training loss {run['final_loss']:.4f}" in card.text and run["data"] in card.text
    card = ModelCard.load(res / "train/dft/seed42/model_card.md")
    scores = json.loads((res / "eval/dft/seed42/toy_math.json").read_text())["scores"]["toy_greedy"]
    assert f"| toy_math | toy_greedy | accuracy | {scores['accuracy']:.4f} ± {scores['stderr']['accuracy']:.4f} |" in card.text
    assert "Discriminative Fine-Tuning" in card.text and card.data.base_model is None  # a local base model
    assert "No evaluation" in ModelCard.load(res / "train/spin_iter1/seed42/model_card.md").text  # feeds SPIN only


def test_an_eval_json_without_scores_is_refused_by_name_and_no_card_is_written(mini_run, tmp_path):
    from workflow_scripts import model_card
    from workflow_scripts.io import InputError

    workdir, _ = mini_run
    bad = tmp_path / "toy_math.json"
    bad.write_text(json.dumps({"protocol": {}}))
    out = tmp_path / "card.md"
    with pytest.raises(InputError, match=r"toy_math.json, field 'scores': an eval JSON needs a 'scores' object"):
        model_card.main(["--run-json", str(workdir / "results/train/dft/seed42/run.json"), "--evals", str(bad),
                         "--output", str(out)])
    assert not out.exists()
