"""A resumable stage killed mid-way and rerun, as a test drives it: the uninterrupted run, the SIGKILL once some
shards are on disk, and the rerun that resumes from them."""
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def killed_and_resumed(command: Callable[[str], list[str]], shards: Path, pattern: str) -> str:
    """Run `command("whole")`; start `command("killed")` and SIGKILL it once 3 files match `pattern` in the
    shard folder `shards`; rerun it to the end and return its stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(command("whole"), env=env, cwd=ROOT, check=True, capture_output=True)
    proc = subprocess.Popen(command("killed"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(shards.glob(pattern))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(list(shards.glob(pattern))) < 12, "killed too late: the test's shards are too few or too fast"
    return subprocess.run(command("killed"), env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
