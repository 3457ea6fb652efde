"""UNRESOLVED hub revisions: a config plans with them, no job loads them, and pin_revisions writes in the commits
the hub's `main` points to (asked of a hub API on loopback here), keeping every other byte of the file."""
import pytest

from loopback_api import LoopbackAPI
from workflow_scripts import pin_revisions
from workflow_scripts.io import InputError
from workflow_scripts.models import load_tokenizer

CONFIG = """# released checkpoints
models:
  base:
    hf_id: org/base
    revision: 1111111111111111111111111111111111111111   # pinned already
  released:
    hf_id: org/released-dft
    revision: UNRESOLVED   # not reachable where this was written
datasets:
  data:
    hf_id: org/selfplay
    revision: UNRESOLVED
    mapping: {prompt: q, chosen: a}
runs: {}
"""
COMMITS = {"/api/models/org/released-dft/revision/main": "a" * 40, "/api/datasets/org/selfplay/revision/main": "b" * 40}


@pytest.fixture
def hub(monkeypatch):
    """A hub API on loopback that knows the commits of COMMITS (404 for any other repo)."""
    def reply(method, path, body):
        return {"id": path.split("/")[3], "sha": COMMITS[path], "siblings": []} if path in COMMITS else None

    api = LoopbackAPI(reply, error_status=404)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", api.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield api.requests
    api.server.shutdown()


def test_unresolved_revisions_are_pinned_in_place(hub, tmp_path, capsys):
    path = tmp_path / "released.yaml"
    path.write_text(CONFIG)
    pin_revisions.main([str(path)])
    expected = CONFIG.replace("revision: UNRESOLVED   # not", f"revision: {'a' * 40}   # not").replace(
        "revision: UNRESOLVED\n", f"revision: {'b' * 40}\n")
    assert path.read_text() == expected
    asked = [r["path"].split("?")[0] for r in hub]
    assert sorted(p for p in asked if p.startswith(("/api/models/", "/api/datasets/"))) == sorted(COMMITS)
    out = capsys.readouterr().out
    assert f"released.yaml:8: models.released (org/released-dft@main) -> {'a' * 40}" in out
    pin_revisions.main([str(path)])
    assert "no UNRESOLVED revision" in capsys.readouterr().out and path.read_text() == expected


def test_a_repo_the_hub_does_not_know_leaves_the_file_as_it_was(hub, tmp_path):
    path = tmp_path / "released.yaml"
    path.write_text(CONFIG.replace("org/selfplay", "org/gone"))
    with pytest.raises(SystemExit, match=r"released.yaml, line 12, field 'datasets.data': the hub has no "
                                         r"org/gone@main .*nothing was written"):
        pin_revisions.main([str(path)])
    assert path.read_text() == CONFIG.replace("org/selfplay", "org/gone")


def test_no_job_loads_an_unresolved_revision():
    with pytest.raises(InputError, match=r"org/released-dft, field 'revision': its revision is UNRESOLVED: pin it"):
        load_tokenizer("org/released-dft", "UNRESOLVED")
