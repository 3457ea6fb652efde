"""The trainer end to end on a tiny model: cached vs live reference, 2 processes vs 1, resume."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workflow_scripts import refcache, train
from workflow_scripts.config import ConfigError, check_config, run_settings
from workflow_scripts.io import InputError
from workflow_scripts.methods import (
    COMMON_KEYS, METHODS, negative_columns, negatives_required, refcache_settings, run_hyperparameters,
)

ROOT = Path(__file__).resolve().parents[1]
BASE_HP = {"lr": 1e-3, "epochs": 2, "batch_size": 16, "micro_batch_size": 4, "warmup_ratio": 0.1, "weight_decay": 0.0,
           "max_grad_norm": 1.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "schedule": "cosine",
           "dtype": "float32", "max_length": 128, "max_prompt_length": 64, "prompt_format": None, "lora": None,
           "checkpoint_every": 0, "keep_checkpoints": 1, "precision": "mixed", "gradient_checkpointing": False,
           "attn_implementation": None, "seed": 7}
METHOD_HP = {
    "dpo": {"beta": 0.1},
    "kto": {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    "dpo_bmc": {"beta": 0.1, "delta": 2.0, "bmc_weight_reference": True},
    "dft": {"tau": 1.0, "gamma": 0.85, "m": 2, "sample": True, "reset_visited": True},
    "dft2": {"tau": 0.3, "gamma": 0.9, "m": 2, "sample": False, "reset_visited": True},
    "simpo_sft": {"beta": 2.0, "gamma_beta_ratio": 0.5, "sft_weight": 1.0},
    "dynft": {"alpha": 1.0},
}


def hp_for(method, **extra):
    """A run's settings as the trainer reads them: the schema's defaults filled in, every type checked."""
    return run_settings({**BASE_HP, "method": method, **METHOD_HP.get(method, {}), **extra})


def run_train(model, data, outdir, hp, *extra):
    """One training run in this process (a fresh accelerate state: each run sets its own precision)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    train.main(["--params", json.dumps(hp), "--run", "t", "--model", model, "--data", data,
                "--outdir", str(outdir), *extra])
    return [json.loads(line) for line in (Path(outdir) / "train_log.jsonl").read_text().splitlines()]


def test_run_settings_take_their_defaults_and_types_from_the_schema_only():
    import yaml

    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    runs = schema["properties"]["runs"]["additionalProperties"]["properties"]
    given = {"method": "dft", "lr": 1e-3, "epochs": 1, "batch_size": 4, "seed": 0}
    settings = run_settings(given)
    assert set(settings) == {*given, *(k for k in [*COMMON_KEYS, *METHODS["dft"].keys] if k in runs)}
    assert all(settings[k] == runs[k]["default"] for k in settings if k not in given)
    assert settings["reset_visited"] is True and settings["over_long_prompts"] == "truncate"
    for bad, message in [({**given, "lr": "fast"}, "at lr: 'fast' is not of type 'number'"),
                         ({**given, "beta": 0.1}, r"\['beta'\] not read by method 'dft'"),
                         ({**given, "method": "simpo"}, r"\['gamma_beta_ratio'\] missing"),
                         ({**given, "method": "dpx"}, "method 'dpx' is not one of")]:
        with pytest.raises(ConfigError, match=message):
            run_settings(bad)


def test_the_workflow_passes_complete_run_settings():
    """What the plan passes a training job is already complete: the trainer adds nothing to it."""
    import yaml

    config = check_config(yaml.safe_load((ROOT / "config.yaml").read_text()), str(ROOT / "schemas/config.schema.yaml"))
    for name, run in config["runs"].items():
        params = run_hyperparameters(run, 42)
        assert run_settings(params) == params, name


@pytest.mark.parametrize("method", ["dpo", "kto", "dpo_bmc", "dft"])
def test_cached_reference_gives_the_live_losses_step_by_step(tiny_world, tmp_path, method):
    model, data = tiny_world
    hp = hp_for(method)
    cache = tmp_path / "ref.safetensors"
    settings = {**refcache_settings(hp), "dtype": "float32", "batch_size": 7, "shard_size": 20,
                "negatives": negatives_required(method, hp)}
    refcache.main(["--params", json.dumps(settings), "--model", model, "--data", data, "--output", str(cache)])
    live = run_train(model, data, tmp_path / "live", hp, "--ref-model", model)
    cached = run_train(model, data, tmp_path / "cached", hp, "--ref-model", model, "--refcache", str(cache))
    assert len(live) == len(cached) == 6
    for a, b in zip(live, cached):  # float32 forwards at other padding widths: ~1e-7 of the summed log-probs
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-4)
    assert json.loads((tmp_path / "cached/run.json").read_text())["reference"]["source"] == "cache"


def test_unpaired_kto_trains_with_cached_or_live_reference(tiny_world, tmp_path):
    """KTO on labelled single completions (column-major, 3 undesirable per desirable): cached and live
    reference give the same losses; the log reports the desirable fraction; unlabelled data is refused."""
    model, pairs = tiny_world
    records = [json.loads(line) for line in Path(pairs).read_text().splitlines()]
    rows = [{"id": f"{r['id']}-t", "prompt": r["prompt"], "chosen": r["chosen"], "label": True} for r in records]
    rows += [{"id": f"{r['id']}-n{j}", "prompt": r["prompt"], "chosen": r["negatives"][j], "label": False}
             for j in range(3) for r in records]
    data = tmp_path / "unpaired.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hp = hp_for("kto", unpaired=True, epochs=1, batch_size=32, micro_batch_size=8, undesirable_weight=0.5)
    cache = tmp_path / "ref.safetensors"
    settings = {**refcache_settings(hp), "shard_size": 16, "dtype": "float32", "batch_size": 16,
                "negatives": negatives_required("kto", hp)}
    assert settings["negatives"] == 0
    refcache.main(["--params", json.dumps(settings), "--model", model, "--data", str(data), "--output", str(cache)])
    live = run_train(model, str(data), tmp_path / "live", hp, "--ref-model", model)
    cached = run_train(model, str(data), tmp_path / "cached", hp, "--ref-model", model, "--refcache", str(cache))
    assert len(live) == len(cached) == len(rows) // 32
    for a, b in zip(live, cached):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-4)
    assert 0 < sum(e["desirable_fraction"] for e in live) / len(live) < 0.5
    with pytest.raises(InputError, match="line 1, field 'label': id 'toy-train-0' has no label"):
        run_train(model, pairs, tmp_path / "unlabelled", hp, "--ref-model", model)


def test_refcache_with_other_settings_is_refused(tiny_world, tmp_path):
    model, data = tiny_world
    hp = hp_for("dpo")
    cache = tmp_path / "ref.safetensors"
    settings = {**refcache_settings(hp), "shard_size": 16, "max_length": 100, "batch_size": 8, "negatives": 1,
                "dtype": hp["dtype"]}
    refcache.main(["--params", json.dumps(settings), "--model", model, "--data", data, "--output", str(cache)])
    with pytest.raises(Exception, match="settings digest differs"):
        run_train(model, data, tmp_path / "out", hp, "--ref-model", model, "--refcache", str(cache))
    assert not (tmp_path / "out/model").exists()


@pytest.mark.parametrize("change, digest", [
    ("data", "data"), ("chat_template", "tokenizer"), ("weights", "reference_weights")])
def test_refcache_of_other_inputs_is_refused_naming_the_digest(tiny_world, tmp_path, change, digest):
    """A cache made from other data, another chat template or other reference weights is refused."""
    import shutil

    model, data = tiny_world
    hp = hp_for("dpo")
    cache = tmp_path / "ref.safetensors"
    settings = {**refcache_settings(hp), "shard_size": 16, "batch_size": 8, "negatives": 1, "dtype": hp["dtype"]}
    refcache.main(["--params", json.dumps(settings), "--model", model, "--data", data, "--output", str(cache)])
    model_copy, data_copy = tmp_path / "model", tmp_path / "data.jsonl"
    shutil.copytree(model, model_copy)
    shutil.copy(data, data_copy)
    if change == "data":
        data_copy.write_text(data_copy.read_text() + "\n")  # same records, other bytes
    elif change == "chat_template":
        template = model_copy / "chat_template.jinja"
        template.write_text(template.read_text() + " ")
    else:
        weights = model_copy / "model.safetensors"
        tensors = load_file(str(weights))
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 1e-3
        from safetensors.torch import save_file
        save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(InputError, match=f"the {digest} digest differs"):
        run_train(str(model_copy), str(data_copy), tmp_path / "out", hp, "--ref-model", str(model_copy),
                  "--refcache", str(cache))
    assert not (tmp_path / "out/model").exists()


def test_over_long_prompts_are_truncated_or_refused(tiny_world, tmp_path):
    """The recipes keep the end of an over-long prompt (counted in run.json); `over_long_prompts: error` refuses it."""
    model, data = tiny_world
    hp = hp_for("sft", max_length=40, max_prompt_length=8, epochs=1)
    run_train(model, data, tmp_path / "truncate", hp)
    assert json.loads((tmp_path / "truncate/run.json").read_text())["responses_truncated"] > 0
    with pytest.raises(InputError, match=r"pairs.jsonl, line 1, field 'prompt': id 'toy-train-\d+': the prompt has "
                                         r"\d+ tokens, over max_prompt_length 8 in an example over max_length 40"):
        run_train(model, data, tmp_path / "error", dict(hp, over_long_prompts="error"))
    assert not (tmp_path / "error/model").exists()


def test_refcache_with_too_few_negatives_is_refused(tiny_world, tmp_path):
    model, data = tiny_world
    hp = hp_for("dft")  # sample: true, m 2, 2 epochs -> negatives 0..3
    cache = tmp_path / "ref.safetensors"
    settings = {**refcache_settings(hp), "shard_size": 16, "batch_size": 8, "negatives": 2, "dtype": hp["dtype"]}
    refcache.main(["--params", json.dumps(settings), "--model", model, "--data", data, "--output", str(cache)])
    with pytest.raises(Exception, match="the cache holds 2 negatives per example; this run reads negative 3"):
        run_train(model, data, tmp_path / "out", hp, "--ref-model", model, "--refcache", str(cache))
    assert not (tmp_path / "out/model").exists()


@pytest.mark.parametrize("method, rises", [
    ("dft", "logps/chosen"),           # DFT's loss is not bounded below; the positives' likelihood rises
    ("dynft", "logps/chosen"),         # p_t * CE_t grows with p_t while p_t < 1/e: the loss itself rises at first
    ("dpo_bmc", "rewards/margin"),
    ("simpo_sft", "rewards/margin"),
])
def test_methods_learn_on_the_tiny_world(tiny_world, tmp_path, method, rises):
    model, data = tiny_world
    hp = hp_for(method, epochs=2 if method == "dft" else 4, lr=3e-3)
    ref = ["--ref-model", model] if METHODS[method].needs_ref else []
    log = run_train(model, data, tmp_path / method, hp, *ref)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    assert log[-1][rises] > log[0][rises]


def test_lora_reference_is_the_model_with_adapters_disabled(tiny_world, tmp_path):
    model, data = tiny_world
    hp = hp_for("dpo", lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}, lr=1e-2)
    log = run_train(model, data, tmp_path / "lora", hp, "--ref-model", model)
    # at step 1 the adapters are zero, so policy == reference and the DPO loss is log 2
    assert log[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert log[-1]["loss"] < log[0]["loss"]
    merged = load_file(str(tmp_path / "lora/model/model.safetensors"))
    assert not any("lora" in k for k in merged)


def _launch_two_processes(args, tmp_path):
    """DDP over gloo on CPU through the rules' launcher (`accelerate launch --multi_gpu`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = ["timeout", "-k", "10", "300", sys.executable, "-m", "workflow_scripts.launch", "--processes", "2",
           "workflow_scripts.train", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("method,dtype", [("dft", "float32"), ("dpo", "float32"), ("dpo", "bfloat16")])
def test_two_processes_reach_the_weights_of_one(tiny_world, tmp_path, method, dtype):
    """Same global batch (16): 1 process x 4 accumulation x 4 vs 2 processes x 2 x 4; DFT's u is
    averaged over processes at each epoch end; bf16 mixed alike (the same micro-batches autocast)."""
    model, data = tiny_world
    hp = hp_for(method, dtype=dtype)
    ref = ["--ref-model", model] if METHODS[method].needs_ref else []
    base = ["--params", json.dumps(hp), "--run", "t", "--model", model, "--data", data, *ref]
    run_train(model, data, tmp_path / "one", hp, *ref)
    output = _launch_two_processes([*base, "--outdir", str(tmp_path / "two")], tmp_path)
    assert output.count("encoded 48 records once") == 1  # by the main process, for both
    one = load_file(str(tmp_path / "one/model/model.safetensors"))
    two = load_file(str(tmp_path / "two/model/model.safetensors"))
    two_run = json.loads((tmp_path / "two/run.json").read_text())
    assert (two_run["world_size"], two_run["gradient_accumulation_steps"]) == (2, 2)
    assert json.loads((tmp_path / "one/run.json").read_text())["gradient_accumulation_steps"] == 4
    initial = load_file(str(Path(model) / "model.safetensors"))
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(one[n], initial[n]) for n in one)


@pytest.mark.parametrize("method", ["dft", "kto"])
def test_preempted_run_resumes_to_identical_weights(tiny_world, tmp_path, method, monkeypatch):
    """SIGUSR1 mid-run: checkpoint (weights, optimizer, scheduler, RNG, DFT u) and exit 143; the
    rerun resumes from it by itself and ends with byte-identical weights and log."""
    import signal

    model, data = tiny_world
    hp = hp_for(method, epochs=2)
    ref = ["--ref-model", model]
    full = run_train(model, data, tmp_path / "full", hp, *ref)

    calls = {"n": 0}
    original = train.Trainer._micro_step

    def signal_at_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4 * 4:  # last micro-batch of optimizer step 4 (4 micro-batches per step)
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(*args, **kwargs)

    monkeypatch.setattr(train.Trainer, "_micro_step", signal_at_step_4)
    with pytest.raises(SystemExit) as stopped:
        run_train(model, data, tmp_path / "resumed", hp, *ref)
    assert stopped.value.code == train.PREEMPTED_EXIT
    assert (tmp_path / "resumed/checkpoints/step4/trainer_state.json").is_file()
    assert not (tmp_path / "resumed/model").exists()
    monkeypatch.setattr(train.Trainer, "_micro_step", original)
    resumed = run_train(model, data, tmp_path / "resumed", hp, *ref)
    assert json.loads((tmp_path / "resumed/run.json").read_text())["resumed_from_step"] == 4
    assert resumed == full
    assert (tmp_path / "full/model/model.safetensors").read_bytes() == \
        (tmp_path / "resumed/model/model.safetensors").read_bytes()
    assert not (tmp_path / "resumed/checkpoints").exists()


@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_a_damaged_reference_cache_is_refused_naming_the_file(tiny_world, tmp_path, damage):
    model, data = tiny_world
    hp = hp_for("dpo")
    cache = tmp_path / "ref.safetensors"
    settings = {**refcache_settings(hp), "shard_size": 16, "batch_size": 8, "negatives": 1, "dtype": hp["dtype"]}
    refcache.main(["--params", json.dumps(settings), "--model", model, "--data", data, "--output", str(cache)])
    blob = cache.read_bytes()
    cache.write_bytes(blob[:-4] + bytes([blob[-4] ^ 1]) + blob[-3:] if damage == "flip" else blob[: len(blob) // 2])
    with pytest.raises(InputError, match=re.escape(f"{cache}: the tensors (sha256 ") + ".* changed or cut"):
        run_train(model, data, tmp_path / "out", hp, "--ref-model", model, "--refcache", str(cache))
    assert not (tmp_path / "out/model").exists()


def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tiny_world, tmp_path, monkeypatch, capsys):
    """Bytes flipped in the newest checkpoint's weights, the one before cut short: the rerun resumes from the
    third newest and ends at the uninterrupted weights; the trained model's digest is recorded beside it."""
    model, data = tiny_world
    hp = hp_for("dpo", checkpoint_every=1, keep_checkpoints=3)
    ref = ["--ref-model", model]
    full = run_train(model, data, tmp_path / "full", hp, *ref)
    monkeypatch.setattr(train.checkpoint, "remove_all", lambda accelerator, outdir: None)
    run_train(model, data, tmp_path / "out", hp, *ref)
    steps = sorted(int(p.name[4:]) for p in (tmp_path / "out/checkpoints").glob("step*"))
    assert len(steps) == 3
    newest, before = (tmp_path / f"out/checkpoints/step{s}" for s in steps[:0:-1])
    weights = newest / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-4] + bytes([blob[-4] ^ 1]) + blob[-3:])
    optimizer = before / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    shutil.rmtree(tmp_path / "out/model")
    capsys.readouterr()
    resumed = run_train(model, data, tmp_path / "out", hp, *ref)
    out = capsys.readouterr().out
    assert f"checkpoint {newest} skipped: model.safetensors missing or not as written" in out
    assert f"checkpoint {before} skipped: optimizer.bin missing or not as written" in out
    assert json.loads((tmp_path / "out/run.json").read_text())["resumed_from_step"] == steps[0]
    assert resumed == full
    assert (tmp_path / "full/model/model.safetensors").read_bytes() == (tmp_path / "out/model/model.safetensors").read_bytes()
    recorded = (tmp_path / "out/model.sha256").read_text().split()[0]
    assert recorded == json.loads((tmp_path / "out/run.json").read_text())["digests"]["final_weights"]


def test_checkpoint_of_other_hyperparameters_is_not_resumed(tiny_world, tmp_path, monkeypatch):
    model, data = tiny_world
    hp = hp_for("dpo", checkpoint_every=2)
    monkeypatch.setattr(train.checkpoint, "remove_all", lambda accelerator, outdir: None)
    run_train(model, data, tmp_path / "out", hp, "--ref-model", model)
    assert (tmp_path / "out/checkpoints/step4").is_dir()
    changed = dict(hp, lr=2e-3)
    (tmp_path / "out/model").rename(tmp_path / "first_model")
    run_train(model, data, tmp_path / "out", changed, "--ref-model", model)
    assert json.loads((tmp_path / "out/run.json").read_text())["resumed_from_step"] is None


def test_sigkill_at_a_random_step_resumes_to_identical_weights(tiny_world, tmp_path):
    """kill -9 at a random optimizer step (possibly mid-checkpoint); the rerun resumes from the
    newest whole checkpoint and ends byte-identical to an uninterrupted run."""
    import random
    import signal
    import time

    model, data = tiny_world
    hp = hp_for("dft", epochs=4, m=1, checkpoint_every=1)  # 12 optimizer steps, negatives 0..3
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def command(outdir):
        return [sys.executable, "-m", "workflow_scripts.train", "--params", json.dumps(hp), "--run", "t",
                "--model", model, "--data", data, "--ref-model", model, "--outdir", str(outdir)]

    subprocess.run(command(tmp_path / "full"), check=True, env=env, capture_output=True, timeout=300)
    kill_after = random.Random().randint(1, 11)
    proc = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed/checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name[4:]) for p in checkpoints.glob("step*") if p.name[4:].isdigit()] \
            if checkpoints.is_dir() else []
        if steps and max(steps) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL, f"the run ended before step {kill_after}"
    assert not (tmp_path / "killed/model").exists()
    subprocess.run(command(tmp_path / "killed"), check=True, env=env, capture_output=True, timeout=300)
    resumed = json.loads((tmp_path / "killed/run.json").read_text())["resumed_from_step"]
    assert resumed is not None and resumed >= kill_after - 1, (kill_after, resumed)
    assert (tmp_path / "full/model/model.safetensors").read_bytes() == \
        (tmp_path / "killed/model/model.safetensors").read_bytes(), f"killed after step {kill_after}"
    assert (tmp_path / "full/train_log.jsonl").read_text() == (tmp_path / "killed/train_log.jsonl").read_text()


def test_data_with_too_few_negatives_is_refused_by_id_and_line(tiny_world, tmp_path):
    model, data = tiny_world
    hp = hp_for("dft", epochs=4)  # sample: true, m 2 -> negatives 0..7; the data holds 4
    with pytest.raises(InputError, match=r"line 1, field 'negatives': id 'toy-train-0' holds 4 negatives; "
                                         r"run 't' \(dft, m=2, epochs=4, sample=True\) needs 8"):
        run_train(model, data, tmp_path / "out", hp, "--ref-model", model)
    assert not (tmp_path / "out").exists()


def _update(outdir, initial) -> torch.Tensor:
    """Trained minus initial weights, the initial ones as loaded in the saved dtype."""
    trained = load_file(str(Path(outdir) / "model/model.safetensors"))
    return torch.cat([(trained[n].double() - initial[n].to(trained[n].dtype).double()).flatten() for n in initial])


def test_bf16_mixed_moves_the_weights_like_float32_and_pure_bf16_does_not(tiny_world, tmp_path):
    """At the recipes' learning rate (1e-6), bf16 mixed (autocast over float32 master weights and
    AdamW state) moves the weights as float32 does; pure bf16 rounds most updates away."""
    model, data = tiny_world
    initial = load_file(str(Path(model) / "model.safetensors"))
    updates = {}
    for name, extra in {"fp32": {}, "mixed": {"dtype": "bfloat16"},
                        "pure": {"dtype": "bfloat16", "precision": "pure"}}.items():
        run_train(model, data, tmp_path / name, hp_for("sft", lr=1e-6, **extra))
        updates[name] = _update(tmp_path / name, initial)
    saved = load_file(str(tmp_path / "mixed/model/model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the master weights are saved
    cos = torch.nn.functional.cosine_similarity
    assert cos(updates["mixed"], updates["fp32"], 0) > 0.99
    assert 0.95 < (updates["mixed"].norm() / updates["fp32"].norm()).item() < 1.05
    moved = {name: (u != 0).double().mean().item() for name, u in updates.items()}
    assert moved["pure"] < 0.5 * moved["fp32"], moved


def test_gradient_checkpointing_trains_like_the_shared_prompt_forward(tiny_world, tmp_path, monkeypatch):
    """Checkpointed layers (recomputed in the backward: counted) keep no KV cache: the flat forward then
    computes each row whole, to the same losses and weights."""
    import transformers.modeling_utils

    model, data = tiny_world
    plain = run_train(model, data, tmp_path / "plain", hp_for("dft"), "--ref-model", model)
    calls = []
    checkpoint = transformers.modeling_utils.checkpoint

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    checkpointed = run_train(model, data, tmp_path / "ckpt", hp_for("dft", gradient_checkpointing=True),
                             "--ref-model", model)
    assert len(calls) == 6 * 4 * 2 and all(c["use_reentrant"] is False for c in calls)  # steps x micro x layers
    for a, b in zip(plain, checkpointed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-4)  # float32 sums of ~100 log-probs
    one, two = (load_file(str(tmp_path / d / "model/model.safetensors")) for d in ("plain", "ckpt"))
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5)


def test_released_dft_selfplay_columns_load_as_negatives_and_train_dft(tiny_world, tmp_path):
    """1-to-m data in the columns of the DFT seeds' released self-play sets (`real` and `generated_<i>`, each a
    [user, assistant] conversation: PenGuln/DFT generator/merge_and_upload.py, read by scripts/run_dft.py) load
    through `negatives: generated_{i}[1].content` into the records a merged generation holds, and dft trains."""
    model, pairs = tiny_world
    records = [json.loads(line) for line in Path(pairs).read_text().splitlines()]

    def conversation(question, answer):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    rows = [{"idx": r["id"].rsplit("-", 1)[1], "prompt": r["prompt"][0]["content"],
             "real": conversation(r["prompt"][0]["content"], r["chosen"]),
             **{f"generated_{i}": conversation(r["prompt"][0]["content"], n) for i, n in enumerate(r["negatives"])}}
            for r in records]
    source, data = tmp_path / "released.jsonl", tmp_path / "toy/train.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    mapping = {"id": "idx", "prompt": "real[0].content", "chosen": "real[1].content",
               "negatives": "generated_{i}[1].content"}
    from workflow_scripts import data as data_stage

    data_stage.main(["--params", json.dumps({"mapping": mapping}), "--dataset", "toy", "--split", "train",
                     "--source", str(source), "--output", str(data)])
    loaded = [json.loads(line) for line in data.read_text().splitlines()]
    assert loaded == records  # the merged format: prompt, chosen and the four negatives in column order
    log = run_train(model, str(data), tmp_path / "dft", hp_for("dft"), "--ref-model", model)
    assert log and all(torch.isfinite(torch.tensor(e["loss"])) for e in log)


# PenGuln/DFT recipes/dft/mistral_base_dft.yaml @ cd7a0fb: the zephyr-style template its trainer renders
DFT_RECIPE_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif "
    "message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if "
    "loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")


def test_the_dft_response_format_scores_what_upstream_scores(tiny_world):
    """PenGuln/DFT (scripts/run_dft.py) renders the prompt without a generation prompt and scores the rest of the
    rendered conversation ('<|assistant|>\\n', the answer, '</s>\\n'), and TRL 0.11's add_eos_token_if_needed adds
    EOS again: prompt_format + response_format encode the same ids."""
    from workflow_scripts.encoding import encode_examples
    from workflow_scripts.models import load_tokenizer

    tok = load_tokenizer(tiny_world[0])
    tok.chat_template = DFT_RECIPE_TEMPLATE
    prompt = [{"role": "user", "content": "Tom has 3 pens. How many?"}]
    text_prompt = tok.apply_chat_template(prompt, tokenize=False)
    text_chosen = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "3"}], tokenize=False)
    text_chosen = text_chosen[len(text_prompt):]
    eos = tok.eos_token
    assert text_chosen == f"<|assistant|>\n3{eos}\n"
    settings = {"max_length": 128, "max_prompt_length": 64, "prompt_format": "<|user|>\n{prompt}" + eos + "\n",
                "response_format": "<|assistant|>\n{response}" + eos + "\n"}
    example, = encode_examples(tok, [{"id": "x", "prompt": prompt, "chosen": "3", "negatives": []}], [], settings)[0]
    ids = example.chosen.ids
    assert ids[:example.chosen.n_prompt] == tok(text_prompt)["input_ids"]  # BOS first (TRL's add_bos_token_if_needed)
    assert ids[example.chosen.n_prompt:] == tok(text_chosen, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_tracking_logs_each_step_of_train_log(tiny_world, tmp_path, monkeypatch):
    """Tracking on (TensorBoard files and W&B's offline mode, as here): every step's metrics of
    train_log.jsonl reach the trackers as they are logged, with the run's hyper-parameters; a tracker
    that is not installed is refused before training."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model, data = tiny_world
    hp = hp_for("sft")
    log = run_train(model, data, tmp_path, hp, "--report-to", "tensorboard,wandb", "--project", "paper")
    events = EventAccumulator(str(tmp_path / "tracking/paper"))
    events.Reload()
    for metric in ("loss", "lr", "grad_norm"):
        logged = {e.step: e.value for e in events.Scalars(metric)}
        assert logged == pytest.approx({r["step"]: r[metric] for r in log}, rel=1e-6)  # TensorBoard keeps float32
    runs = list((tmp_path / "tracking/wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    records = list(wandb_records(runs[0]))
    history = [{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    assert {h["_step"]: h["loss"] for h in history} == {r["step"]: r["loss"] for r in log}
    run = next(r.run for r in records if r.HasField("run"))
    assert (run.display_name, run.project) == ("t/seed7", "paper")
    config = {i.key or ".".join(i.nested_key): json.loads(i.value_json)
              for r in records if r.HasField("config") for i in r.config.update}
    assert config["lr"] == hp["lr"] and config["adam_betas"] == json.dumps(hp["adam_betas"])

    monkeypatch.setattr("accelerate.tracking.is_mlflow_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"\['mlflow'\], but the package is not installed"):
        run_train(model, data, tmp_path / "mlflow", hp, "--report-to", "mlflow")


def wandb_records(path: Path):
    """The records of W&B's offline run file (a LevelDB-style log of protobuf records: 32 KiB blocks,
    each chunk a 7-byte header of checksum, length and type; wandb 0.31 ships no Python reader)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_a_base_model_without_a_template_trains_through_the_configured_one_and_keeps_it(tiny_world, tmp_path):
    """The configured template renders the training prompts (the losses of its rendering written as a raw
    prompt_format) and is saved with the model, whose own tokenizer then renders the same prompts."""
    from test_chat_templates import without_template
    from transformers import AutoTokenizer

    from workflow_scripts.chat_templates import ZEPHYR
    from workflow_scripts.encoding import render_prompt
    from workflow_scripts.models import load_tokenizer

    model, data = tiny_world
    base = without_template(model, tmp_path / "base")
    hp = hp_for("sft", epochs=1)
    with pytest.raises(InputError, match="ships no chat template"):
        run_train(base, data, tmp_path / "none", hp)
    templated = run_train(base, data, tmp_path / "templated", hp, "--chat-template", ZEPHYR)
    eos = load_tokenizer(base).eos_token
    raw = run_train(base, data, tmp_path / "raw", {**hp, "prompt_format": "<|user|>\n{prompt}" + eos + "\n<|assistant|>\n"})
    assert [r["loss"] for r in templated] == [r["loss"] for r in raw]
    saved = AutoTokenizer.from_pretrained(tmp_path / "templated/model")
    assert saved.chat_template == ZEPHYR
    prompts = [json.loads(line)["prompt"] for line in Path(data).read_text().splitlines()[:5]]
    configured = load_tokenizer(base, chat_template=ZEPHYR)
    assert all(saved.apply_chat_template(p, tokenize=False, add_generation_prompt=True) == render_prompt(configured, p)
               for p in prompts)


def test_a_killed_reference_cache_resumes_from_its_shards_to_the_same_bytes(tiny_world, tmp_path):
    """SIGKILL after some shards (KTO's cross-example pairs and per-token values included): no cache; the rerun
    reads the finished shards back and writes a cache byte-identical to an uninterrupted build."""
    from kill_resume import killed_and_resumed

    from workflow_scripts.shards import shard_folder

    model, data = tiny_world
    settings = {**refcache_settings(hp_for("kto")), "token_level": True, "dtype": "float32", "batch_size": 2,
                "shard_size": 4, "negatives": 1}

    def command(name):
        return [sys.executable, "-m", "workflow_scripts.refcache", "--params", json.dumps(settings), "--model", model,
                "--data", data, "--output", str(tmp_path / f"{name}.safetensors")]

    folder = shard_folder(tmp_path / "killed.safetensors")
    resumed = killed_and_resumed(command, folder, "shard*.safetensors")
    assert int(re.search(r"(\d+) shards resumed", resumed).group(1)) >= 3 and not folder.exists()
    for suffix in (".safetensors", ".json"):
        assert (tmp_path / f"killed{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes(), suffix


def test_a_reference_cache_split_over_two_processes_is_the_one_built_by_one(tiny_world, tmp_path):
    """Two processes (one per GPU on the cluster; gloo processes here) each compute every other shard, KTO's
    cross-shard pairs and per-token values included; the first assembles a cache byte-identical to one
    process's."""
    model, data = tiny_world
    settings = {**refcache_settings(hp_for("kto")), "token_level": True, "dtype": "float32", "batch_size": 2,
                "shard_size": 8, "negatives": 1}
    logs = {}
    for n in (1, 2):
        logs[n] = subprocess.run(
            [sys.executable, "-m", "workflow_scripts.launch", "--processes", str(n), "workflow_scripts.refcache",
             "--params", json.dumps(settings), "--model", model, "--data", data,
             "--output", str(tmp_path / f"p{n}.safetensors")],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
        assert logs[n].returncode == 0, logs[n].stderr[-3000:]
    computed = {int(i): int(c) for i, c in re.findall(r"process (\d) of 2: (\d+) shards computed", logs[2].stdout)}
    assert set(computed) == {0, 1} and min(computed.values()) >= 1, logs[2].stdout
    for suffix in (".safetensors", ".json"):
        assert (tmp_path / f"p2{suffix}").read_bytes() == (tmp_path / f"p1{suffix}").read_bytes(), suffix


@pytest.mark.parametrize("method, extra", [("kto", {}), ("dft", {"m": 1, "sample": True})])
def test_records_encoded_once_give_each_epochs_examples_and_truncations(tiny_world, tmp_path, method, extra):
    """The trainer's memory-mapped encoding (once per run) builds exactly the examples the reference cache
    tokenises (KTO's mismatched rows and DFT's per-epoch negatives included) and counts the same truncations;
    a second run reuses it, another fingerprint or a damaged record of it rebuilds it."""
    from workflow_scripts.records import read_pairs
    from workflow_scripts.encoded import EncodedRecords, encode_once
    from workflow_scripts.encoding import encode_examples
    from workflow_scripts.models import load_tokenizer

    model, data = tiny_world
    hp = hp_for(method, max_length=40, max_prompt_length=8, **extra)
    n, kl = negatives_required(method, hp), METHODS[method].kl_pairs
    tok, records, folder = load_tokenizer(model), read_pairs(data, n), tmp_path / "encoded"
    assert encode_once(folder, {"run": 1}, tok, iter(records), len(records), n, hp, kl, data)
    assert not encode_once(folder, {"run": 1}, tok, iter(records), len(records), n, hp, kl, data)
    encoded = EncodedRecords(folder, [(r["id"], r.get("label")) for r in records], hp, kl, data)
    for epoch in range(hp["epochs"]):
        columns = negative_columns(method, hp, epoch)
        examples, truncated = encode_examples(tok, records, columns, hp, kl_pairs=kl, source=data)
        assert [encoded.example(i, columns) for i in range(len(records))] == examples
        assert encoded.responses_truncated(columns) == truncated > 0
    assert encode_once(folder, {"run": 2}, tok, iter(records), len(records), n, hp, kl, data)
    (folder / "fingerprint.json").write_text("{")  # damaged: encoded again, not refused
    assert encode_once(folder, {"run": 2}, tok, iter(records), len(records), n, hp, kl, data)
    for changed in (records[:-1], records + records[:1]):  # the file changed between the run's two passes
        with pytest.raises(InputError, match=re.escape(f"{data}: holds ") + ".* records where the run's first pass"):
            encode_once(tmp_path / "changed", {}, tok, iter(changed), len(records), n, hp, kl, data)
        assert not (tmp_path / "changed").exists()
