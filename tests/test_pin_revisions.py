"""UNRESOLVED hub revisions: a config plans with them, no job loads them, and pin_revisions writes in the commits
the hub's `main` points to (asked of a hub API on loopback here), keeping every other byte of the file."""
import http.server
import json
import threading

import pytest

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
    """A hub API on loopback that knows the commits of COMMITS."""
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0]
            asked.append(path)
            if path not in COMMITS:
                self.send_error(404)
                return
            body = json.dumps({"id": path.split("/")[3], "sha": COMMITS[path], "siblings": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield asked
    server.shutdown()


def test_unresolved_revisions_are_pinned_in_place(hub, tmp_path, capsys):
    path = tmp_path / "released.yaml"
    path.write_text(CONFIG)
    pin_revisions.main([str(path)])
    expected = CONFIG.replace("revision: UNRESOLVED   # not", f"revision: {'a' * 40}   # not").replace(
        "revision: UNRESOLVED\n", f"revision: {'b' * 40}\n")
    assert path.read_text() == expected
    assert sorted(p for p in hub if p.startswith(("/api/models/", "/api/datasets/"))) == sorted(COMMITS)
    out = capsys.readouterr().out
    assert f"released.yaml:8: models.released (org/released-dft@main) -> {'a' * 40}" in out
    pin_revisions.main([str(path)])
    assert "no UNRESOLVED revision" in capsys.readouterr().out and path.read_text() == expected


def test_a_repo_the_hub_does_not_know_leaves_the_file_as_it_was(hub, tmp_path):
    path = tmp_path / "released.yaml"
    path.write_text(CONFIG.replace("org/selfplay", "org/gone"))
    with pytest.raises(Exception):
        pin_revisions.main([str(path)])
    assert path.read_text() == CONFIG.replace("org/selfplay", "org/gone")


def test_no_job_loads_an_unresolved_revision():
    with pytest.raises(InputError, match=r"org/released-dft, field 'revision': its revision is UNRESOLVED: pin it"):
        load_tokenizer("org/released-dft", "UNRESOLVED")
