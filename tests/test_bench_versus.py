"""The bench's trainer comparison (bench/versus.py) on a small random Llama: our trainer and TRL's
DPOTrainer / SFTTrainer(loss_type="dft"), each in its own process, train on identical token ids and
log the same loss at every optimizer step (same order, schedule, clipping and AdamW), so the bench's
throughput and memory ratios compare equal work."""
from __future__ import annotations

import math
import os

import pytest

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")

from bench.common import make_world  # noqa: E402
from bench.trainer import BASE  # noqa: E402
from bench.versus import compare  # noqa: E402

# TRL's configs still carry transformers' deprecated `gradient_checkpointing` argument
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")


@pytest.mark.parametrize("method", [{"method": "dpo", "beta": 0.1}, {"method": "dynft", "alpha": 1.0}])
def test_our_trainer_and_trl_train_the_same_run(tmp_path, method):
    model, data = make_world(tmp_path, n=32, hidden=64, layers=2)
    # 4 optimizer steps of 8, two micro-batches each for DPO (one for Dynamic FT: TRL's token mean is the batch's)
    hp = {**BASE, **method, "lr": 3e-3, "batch_size": 8, "micro_batch_size": 4 if method["method"] == "dpo" else 8,
          "warmup_ratio": 0.0, "epochs": 1}
    result = compare(model, data, hp, 1.0, 1.0)
    ours, trl = result["ours"]["losses"], result["trl"]["losses"]
    assert result["same_token_ids"] and len(ours) == len(trl) == 4
    assert result["max_loss_difference"] <= 1e-4, (ours, trl)
    assert abs(ours[-1] - ours[0]) > 1e-3  # the runs moved: equal losses are not equal starting points only
    assert all(math.isfinite(result[k]) for k in ("speedup", "peak_memory_ratio", "step_peak_ratio"))
