"""The cluster path: the SLURM profile (slurm/config.v9+.yaml) and the workflow through it against a
real SLURM, a one-node cluster on loopback (tests/slurm_cluster.py: Debian's slurm-wlm, slurmdbd, munge
and MariaDB, installed with apt-get when missing, started here as background processes, stopped at
the end) with fake GPUs of a named model, so that the scheduler checks every GPU request.

The test profile is slurm/config.v9+.yaml with the site placeholders replaced by the test cluster's
partitions, account and GPU model, without conda (none on these machines; envs/ is checked by
tests/test_envs.py), with a 1 s first status query and requests scaled to the one node.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from slurm_cluster import ACCOUNT, CPU_PARTITION, GPU_MODEL, GPU_PARTITION, INTERFACE, LoopbackSlurm, Unavailable
from workflow_runner import ENV, snakemake

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests/configs/mini.yaml"
PROFILE = ROOT / "slurm/config.v9+.yaml"
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
PLACEHOLDERS = {"YOUR_CPU_PARTITION": CPU_PARTITION, "YOUR_GPU_PARTITION": GPU_PARTITION,
                "YOUR_ACCOUNT": ACCOUNT, "YOUR_GPU_MODEL": GPU_MODEL}

pytestmark = pytest.mark.slurm


def load_profile(text: str | None = None) -> dict:
    return yaml.safe_load(PROFILE.read_text() if text is None else text)


def gpu_rules(profile: dict) -> set[str]:
    return {rule for rule, res in profile["set-resources"].items() if "gpu_model" in res}


def local_rules() -> set[str]:
    """Rules named in a `localrules:` directive of the Snakefile or rules/*.smk."""
    names = set()
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for block in re.findall(r"^localrules:\s*\n((?:[ \t]+\S.*\n?)+)", path.read_text(), re.M):
            names |= set(re.findall(r"\w+", block))
    return names


def all_rules() -> set[str]:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--list-rules"],
                            capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"^(\w+)", result.stdout, re.M))


def derived_profile(directory: Path, text: str, **overrides) -> Path:
    """A profile directory holding `text` (slurm/config.v9+.yaml, edited) without conda, plus overrides."""
    profile = load_profile(text)
    del profile["software-deployment-method"]  # conda cannot be installed here; tests/test_envs.py checks envs/
    profile.update(overrides)
    directory.mkdir(parents=True)
    (directory / "config.v9+.yaml").write_text(yaml.safe_dump(profile))
    return directory


def loopback_profile(directory: Path) -> Path:
    """slurm/ for the loopback cluster: its partitions, account and GPU model; a 1 s first status query;
    memory and cores scaled to the one node."""
    text = PROFILE.read_text()
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    profile = derived_profile(directory, text, **{"slurm-init-seconds-before-status-checks": 1, "latency-wait": 5,
                                                  "jobs": 8, "slurm-keep-successful-logs": True})
    config = load_profile((profile / "config.v9+.yaml").read_text())
    config["default-resources"]["mem_mb"] = 1000
    for rule, res in config["set-resources"].items():
        res["mem_mb"] = 1000
        if "cpus_per_gpu" in res:
            res["cpus_per_gpu"] = 1
    (profile / "config.v9+.yaml").write_text(yaml.safe_dump(config))
    return profile


# ---------------------------------------------------------------------------- the profile, statically


def test_profile_sets_site_values_in_one_place():
    text = PROFILE.read_text()
    for placeholder in PLACEHOLDERS:
        assert len(re.findall(rf"\b{placeholder}\b", text)) == 1, f"{placeholder} must be set in one place"
    profile = load_profile()
    for res in [profile["default-resources"], *profile["set-resources"].values()]:
        assert "gres" not in res and not re.search(r"--(gres|gpus)", res.get("slurm_extra", "")), res  # gpu / gpu_model
    assert "--signal=USR1@" in profile["set-resources"]["train"]["slurm_extra"]  # checkpoint before the time limit
    assert profile["executor"] == "slurm" and profile["retries"] >= 1 and profile["slurm-requeue"] is True
    assert profile["slurm-status-command"] == "squeue"  # sacct's "CANCELLED by <uid>" hangs plugin 2.8.0
    assert "cpus_per_task" not in profile["default-resources"]  # it would override cpus_per_gpu of the GPU rules
    gpus = gpu_rules(profile)
    assert {"generate", "spin_generate", "step_controlled_generate", "refcache", "train", "evaluate"} <= gpus
    for rule in gpus:
        res = profile["set-resources"][rule]
        assert (res["gpu_model"], res["slurm_partition"]) == ("YOUR_GPU_MODEL", "YOUR_GPU_PARTITION"), rule
        assert res["cpus_per_gpu"] >= 1 and "cpus_per_task" not in res, rule
        # a job's GPUs on one node; a run's `nodes` (rules/train.smk) for training
        assert "nodes" not in res if rule.startswith("train") else res["nodes"] == 1, rule
    for rule in ("train", "train_multinode"):  # the run's `processes` x `nodes`, from rules/train.smk
        assert "gpu" not in profile["set-resources"][rule]
    assert "gpu" not in profile["set-resources"]["refcache"]  # config `refcache.processes`, from rules/refcache.smk


def test_every_rule_is_local_or_has_resources_in_the_profile():
    """A new rule must be classified: a localrule, or a CPU / GPU entry of the profile."""
    profile = load_profile()
    rules, local = all_rules(), local_rules()
    assert {"all", "merge", "table", "manifest", "lm_eval_tasks"} <= local
    unclassified = rules - local - set(profile["set-resources"])
    assert not unclassified, f"rules neither local nor in slurm/config.v9+.yaml set-resources: {unclassified}"
    assert not (set(profile["set-resources"]) - rules), "profile entries for rules that do not exist"
    assert not (set(profile["set-resources"]) & local), "local rules do not need resources"


def test_profile_keys_are_options_of_snakemake_with_the_plugin():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--help"], capture_output=True, text=True, env=ENV)
    options = set(re.findall(r"--([a-z0-9-]+)", result.stdout))
    unknown = set(load_profile()) - options
    assert not unknown, unknown


def plan(text: str) -> list[dict]:
    """The jobs of a dry run's printed plan: rule, wildcards and resources."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule \w+:)", text):
        m = re.search(r"^(local)?rule (\w+):", block, re.M)
        if not m:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        jobs.append({"rule": m[2], "local": bool(m[1]),
                     "resources": dict(kv.split("=", 1) for kv in res[1].split(", ")) if res else {},
                     "wildcards": dict(kv.split("=", 1) for kv in wildcards[1].split(", ")) if wildcards else {}})
    return jobs


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_dry_run_with_the_profile_shows_gpu_requests(experiment, tmp_path):
    """`snakemake -n --profile slurm --configfile experiments/<paper>.yaml` (the profile as written, only
    without conda): every job of a GPU rule requests the GPU model on the GPU partition; train asks for
    the run's `processes` GPUs; CPU jobs ask for no GPU."""
    profile = derived_profile(tmp_path / "profile", PROFILE.read_text())
    result = snakemake(tmp_path, "-n", "--profile", str(profile), "--configfile", str(experiment), timeout=300)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-5000:]
    jobs = plan(text)
    config = yaml.safe_load(experiment.read_text())
    gpus, runs = gpu_rules(load_profile()), config["runs"]
    assert any(j["rule"] == "train" for j in jobs) == bool(runs)  # the released checkpoints train nothing
    assert any(j["rule"] in gpus - {"train"} for j in jobs)
    for job in jobs:
        res = job["resources"]
        if job["local"]:
            continue
        if job["rule"] in gpus:
            assert res["gpu_model"] == "YOUR_GPU_MODEL" and res["slurm_partition"] == "YOUR_GPU_PARTITION", job
            assert int(res["gpu"]) >= 1 and int(res["cpus_per_gpu"]) >= 1 and res["nodes"] == "1", job
            assert "cpus_per_task" not in res, job
            if job["rule"] == "train":
                run = job["wildcards"]["run"]
                expected = runs[run].get("processes", 1) if run in runs else None  # SPIN iterations: their run's
                assert expected is None or int(res["gpu"]) == expected, job
            if job["rule"] == "refcache":
                assert int(res["gpu"]) == config.get("refcache", {}).get("processes", 1), job
        else:
            assert "gpu" not in res and "gpu_model" not in res, job
            assert res["slurm_partition"] == "YOUR_CPU_PARTITION", job


def test_a_multi_node_launch_outside_a_slurm_job_is_refused_by_name(monkeypatch):
    from workflow_scripts import launch

    for name in ("SLURM_JOB_ID", "SLURM_NODEID", "SLURM_JOB_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="--nodes 2 runs one launcher per node of a SLURM allocation"):
        launch.command(1, None, "workflow_scripts.train", [], nodes=2)
    assert launch.command(1, None, "workflow_scripts.train", ["--x"])[1:] == ["-m", "workflow_scripts.train", "--x"]


def test_a_rendezvous_port_held_on_the_first_node_is_refused_there(monkeypatch):
    """The port derived from the job id is checked on the first node only (where the rendezvous listens)."""
    import socket

    from workflow_scripts import launch

    held = socket.socket()
    for port in range(20000, 40000):  # below the ephemeral range, so another process is unlikely to take it
        try:
            held.bind(("", port))
            break
        except OSError:
            continue
    held.listen()
    monkeypatch.setattr(launch, "first_node_address", lambda nodelist: "10.77.0.1")
    monkeypatch.setenv("SLURM_JOB_ID", str(port - 20000 + 40000))  # mod 20000 -> the held port
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    with held:
        monkeypatch.setenv("SLURM_NODEID", "0")
        with pytest.raises(SystemExit, match=f"the rendezvous port {port} .* is held on"):
            launch.command(1, None, "workflow_scripts.train", [], nodes=2)
        monkeypatch.setenv("SLURM_NODEID", "1")
        cmd = launch.command(1, None, "workflow_scripts.train", [], nodes=2)
    assert cmd[cmd.index("--main_process_port") + 1] == str(port) and cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--main_process_ip") + 1] == "10.77.0.1"


# ---------------------------------------------------------------------------- against a real SLURM


@pytest.fixture(scope="module")
def cluster():
    """Two nodes, the second in a network namespace of its own; gloo reaches the other node through the
    interface both namespaces call INTERFACE (a job may run on either node)."""
    try:
        slurm = LoopbackSlurm(nodes=2).start()
    except Unavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests: {e}")
        pytest.skip(str(e))
    print(f"\nloopback SLURM up: {', '.join(f'{k} {v:.1f} s' for k, v in slurm.timings.items())}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOO_SOCKET_IFNAME", INTERFACE)
        yield slurm
    slurm.stop()


LONG_STEPS = 800


def slurm_config(*long_runs: str, processes: int = 1) -> dict:
    """The mini config cut to one trained run (sft) and its lm-eval table: a handful of SLURM jobs.
    `long_runs` adds runs of LONG_STEPS optimizer steps that checkpoint only on a signal (not in the table),
    trained by `processes` processes (DDP, one GPU each)."""
    config = yaml.safe_load(MINI.read_text())
    sft = config["runs"]["sft"]
    config["runs"] = {"sft": sft}
    for name in long_runs:  # 64 examples, batch 16: 4 steps per epoch
        config["runs"][name] = {**sft, "epochs": LONG_STEPS // 4, "checkpoint_every": 0, "processes": processes}
    table = config["tables"]["mini_table"]
    table["rows"] = ["sft"]
    table["columns"] = [c for c in table["columns"] if c.get("eval", table["eval"]) == table["eval"]]
    config["tables"] = {"mini_table": table}
    config["evals"] = {table["eval"]: config["evals"][table["eval"]]}
    return config


def submitted(text: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", text)


def rule_of(job: dict) -> str:
    """The plugin's job comment: rule_<rule>[_wildcards_<wildcards>]."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(slurm_config()))
    profile = loopback_profile(workdir / "profile")
    t = time.monotonic()
    result = snakemake(workdir, "--profile", str(profile), "--configfile", str(config))
    print(f"\nmini workflow through SLURM: {time.monotonic() - t:.0f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:] + cluster.logs()
    return workdir, profile, result.stdout + result.stderr


def test_workflow_runs_through_the_scheduler(cluster, slurm_run):
    """One SLURM job per rule instance that is not local, in the right partition, with a GPU of the
    model exactly for the GPU rules, all COMPLETED in the accounting (sacct)."""
    workdir, _, text = slurm_run
    assert (workdir / "results/tables/mini_table.tex").is_file() and (workdir / "results/manifest.json").is_file()
    stats = text.split("Job stats:")[1].split("total")[0]
    planned = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    remote = {rule: n for rule, n in planned.items() if rule not in local_rules()}
    assert remote == {"build_tiny_model": 1, "data": 2, "train": 1, "evaluate": 1}, planned
    accounting = {j["JobID"]: j for j in cluster.sacct("JobID", "Comment", "Partition", "Account", "State",
                                                       "AllocTRES", "Elapsed")}
    ours = [accounting[i] for i in submitted(text)]
    print("\nsacct:\n" + "\n".join(" | ".join(j.values()) for j in ours))
    assert sorted(rule_of(j) for j in ours) == sorted(r for r, n in remote.items() for _ in range(n))
    gpus = gpu_rules(load_profile())
    for job in ours:
        assert job["State"] == "COMPLETED" and job["Account"] == ACCOUNT, job
        gpu = rule_of(job) in gpus
        assert (f"gres/gpu:{GPU_MODEL}=1" in job["AllocTRES"]) == gpu, job
        assert job["Partition"] == (GPU_PARTITION if gpu else CPU_PARTITION), job
    # a second invocation has nothing to do
    rerun = snakemake(workdir, "-n", "--profile", str(slurm_run[1]), "--configfile", str(workdir / "config.yaml"))
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout + rerun.stderr, rerun.stdout[-3000:]


@pytest.mark.parametrize("signal, state", [("TERM", "CANCELLED"), ("USR1", "FAILED")], ids=["scancel", "usr1"])
def test_interrupted_training_is_retried_and_resumes_from_its_checkpoint(cluster, slurm_run, signal, state):
    """A 2-process (DDP) training job interrupted mid-run through SLURM: `scancel` (SIGTERM to its processes,
    as at a preemption; the job ends CANCELLED) or `scancel --signal=USR1` (what the profile's
    `--signal=USR1@600` sends before the time limit; the trainer exits 143, the job ends FAILED). Every
    process of the job step gets the signal: the job's snakemake, its shell and accelerate's launcher live
    through it, both trainer processes write the checkpoint, snakemake retries the job (profile
    `retries`), and the retry resumes from that checkpoint and completes."""
    workdir, profile, _ = slurm_run
    run = f"sft_{signal.lower()}"
    config = workdir / f"{run}.yaml"
    config.write_text(yaml.safe_dump(slurm_config(run, processes=2)))
    out_dir = workdir / f"results/train/{run}/seed42"
    log = workdir / f"results/logs/train/{run}/seed42.log"
    output = workdir / f"{run}.out"
    t = time.monotonic()
    with open(output, "w") as out:
        proc = snakemake(workdir, f"results/train/{run}/seed42/run.json", "--profile", str(profile), "--configfile",
                         str(config), timeout=480, stdout=out)
    try:
        progress = re.compile(rf"train {run}: .*\| *[1-9]\d*/{LONG_STEPS}")  # tqdm reports every 5 s
        while not (log.exists() and progress.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, output.read_text()[-5000:]
            assert time.monotonic() - t < 300, "training did not start"
            time.sleep(0.5)
        queue = cluster.run("squeue", "-h", "-o", "%i|%k|%T").stdout.splitlines()
        job = [line.split("|")[0] for line in queue if f"rule_train_wildcards_{run}_42" in line]
        assert len(job) == 1, queue
        interrupted_at = time.monotonic() - t
        cluster.run("scancel", *(["--signal=USR1"] if signal == "USR1" else []), job[0])
        assert proc.wait(timeout=480) == 0, output.read_text()[-5000:] + cluster.logs()
    finally:
        if proc.poll() is None:
            proc.terminate()  # timeout passes it on to snakemake
            proc.wait(timeout=60)
    text = output.read_text()
    assert f"SLURM-job '{job[0]}' failed, SLURM status is: '{state}'" in text
    jobs = submitted(text)
    assert len(jobs) == 2 and jobs[0] == job[0], text[-3000:]
    accounting = {j["JobID"]: j for j in cluster.sacct("JobID", "Comment", "State", "ExitCode", "Elapsed")}
    summary = json.loads((out_dir / "run.json").read_text())
    print(f"\n{signal} at {interrupted_at:.0f} s, resumed from step {summary['resumed_from_step']}, "
          f"whole run through SLURM {time.monotonic() - t:.0f} s; sacct:\n"
          + "\n".join(" | ".join(accounting[i].values()) for i in jobs))
    assert accounting[jobs[0]]["State"].startswith(state) and accounting[jobs[1]]["State"] == "COMPLETED"
    # the step that ran the job: its snakemake outlived the signal and exited with the training's failure (a
    # snakemake killed by the signal, 0:10 or 0:15, would have taken the trainer processes down with the step)
    steps = cluster.run("sacct", "-j", jobs[0], "-n", "-P", "-o", "JobID,ExitCode").stdout
    assert f"{jobs[0]}.0|1:0" in steps.splitlines(), steps
    step = summary["resumed_from_step"]
    assert 0 < step < LONG_STEPS
    assert f"checkpoints/step{step} (step {step} of {LONG_STEPS})" in log.read_text()  # the retry's log
    steps = [json.loads(line)["step"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, LONG_STEPS + 1))  # the first attempt's steps came back with the checkpoint
    assert not (out_dir / "checkpoints").exists()  # removed once the run is whole


def test_runs_of_two_nodes_train_in_one_job_across_them_with_ddp_and_zero3(cluster, slurm_run):
    """Two runs with `nodes: 2` (one process per node), one DDP and one DeepSpeed ZeRO-3 (accelerate's
    `standard` multi-node launcher): each is one SLURM job of both nodes (rule train_multinode), srun inside
    the job starts a launcher on each node, the two trainer processes meet over gloo across the nodes'
    network namespaces, and each run completes with a world of two. ZeRO-3's parameters are partitioned
    over the two nodes; its weights equal DDP's."""
    workdir, profile, _ = slurm_run
    runs = {"sft_two_nodes": {}, "sft_two_nodes_zero3": {"deepspeed": "deepspeed_zero3"}}
    config = slurm_config()
    for run, extra in runs.items():
        config["runs"][run] = {**config["runs"]["sft"], "nodes": 2, **extra}
    path = workdir / "two_nodes.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, *(f"results/train/{run}/seed42/run.json" for run in runs), "--profile", str(profile),
                       "--configfile", str(path), timeout=900)
    text = result.stdout + result.stderr
    logs = "".join(log.read_text()[-3000:] for log in (workdir / "results/logs/train").glob("sft_two_nodes*/*.log"))
    assert result.returncode == 0, text[-4000:] + logs + cluster.logs()
    accounting = {j["JobID"]: j for j in cluster.sacct("JobID", "Comment", "State", "NNodes", "NodeList")}
    jobs = [accounting[i] for i in submitted(text)]
    print("\nsacct:\n" + "\n".join(" | ".join(job.values()) for job in jobs))
    assert len(jobs) == 2
    for job in jobs:
        assert rule_of(job) == "train_multinode" and job["State"] == "COMPLETED" and job["NNodes"] == "2", job
    out = {run: workdir / f"results/train/{run}/seed42" for run in runs}
    summaries = [json.loads((folder / "run.json").read_text()) for folder in out.values()]
    assert [(s["distributed_type"], s["world_size"]) for s in summaries] == [("MULTI_CPU", 2), ("DEEPSPEED", 2)]
    ddp, zero3 = (load_file(str(folder / "model/model.safetensors")) for folder in out.values())
    assert set(ddp) == set(zero3)
    for name in ddp:
        torch.testing.assert_close(zero3[name], ddp[name], rtol=0, atol=1e-6)
