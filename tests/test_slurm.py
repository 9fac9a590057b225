"""Sweeps on a real Slurm (CI: `bash slurm/local-slurm.sh up`; these skip when `sinfo` fails).

Tiny runs on CPU: experiment=smoke (a random-weight tiny RoBERTa, 32 SST-2 rows from the test fixtures,
4 steps). One run is made to fail on purpose: the model gets 20 position embeddings (19 usable: RoBERTa's positions start after the padding index) and
that run keeps sentences up to 64 tokens, which the trainer refuses when it builds the run and records
as `failed`; the other three keep sentences short enough and succeed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
CPU_ONLY = ["cluster=slurm", "cluster.gpus=null", "cluster.cpus=1", "cluster.mem_gb=null",
            "cluster.time_min=15"]  # fmt: skip


def env() -> dict[str, str]:
    # Slurm jobs inherit the submitting environment (sbatch --export=ALL): this checkout, these data.
    return {**os.environ, "PYTHONPATH": str(ROOT), "GLUE_DIR": str(ROOT / "tests/fixtures/glue")}


def lora(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lora_repro.cli", *args], cwd=ROOT, env=env(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def records(runs: Path) -> dict[str, dict]:
    """max_length -> record, for the smoke runs under `runs`."""
    out = {}
    for path in runs.rglob("result.json"):
        rec = json.loads(path.read_text())
        out[rec["config"]["task"]["max_length"]] = rec
    return out


def test_sweep_on_slurm_records_failures_and_relaunches_only_them(tmp_path: Path):
    sweep = ["train", "-m", "experiment=smoke", *CPU_ONLY, f"runs_dir={tmp_path}",
             "model.arch.max_position_embeddings=20", "task.max_length=8,12,16,64"]  # fmt: skip
    first = lora(*sweep)
    log = first.stdout + first.stderr
    assert first.returncode == 1, log  # a sweep with a failed run exits non-zero
    assert "sweep plan: 4 runs: 4 to run" in log and "4 runs: 1 failed, 3 success" in log, log
    recs = records(tmp_path)
    assert {k: r["status"] for k, r in recs.items()} == {
        8: "success",
        12: "success",
        16: "success",
        64: "failed",
    }
    # caught when the run is built (a ConfigError recorded as the sweep run's failure), not mid-run
    assert "task.max_length=64 exceeds tiny-roberta's 19 positions" in recs[64]["error"]
    jobs = {k: r["environment"]["slurm_job_id"] for k, r in recs.items()}
    assert all(jobs.values()), "every run went through Slurm"
    done = {
        k: (tmp_path / r["run"]["id"] / "result.json").read_text()
        for k, r in recs.items()
        if k != 64
    }

    again = lora(*sweep)
    log = again.stdout + again.stderr
    assert again.returncode == 1, log
    assert "sweep plan: 4 runs: 3 done, 1 to run" in log, log
    submitted = re.findall(
        r"#\d+ : .*", log
    )  # the submitit launcher logs one line per submitted run
    assert len(submitted) == 1 and "task.max_length=64" in submitted[0], submitted
    recs = records(tmp_path)
    assert recs[64]["status"] == "failed" and recs[64]["environment"]["slurm_job_id"] != jobs[64]
    assert all(
        (tmp_path / recs[k]["run"]["id"] / "result.json").read_text() == done[k] for k in done
    )

    res = lora(
        "collect", "smoke", "--runs-dir", str(tmp_path), "--results-dir", str(tmp_path / "results")
    )
    assert res.returncode == 0 and "4 records (1 failed, 3 success)" in res.stdout, res.stderr


def _wait_gone(job: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while subprocess.run(
        ["squeue", "-h", "-j", job], capture_output=True, text=True
    ).stdout.strip():
        assert time.time() < deadline, f"job {job} still queued after {timeout}s"
        time.sleep(1)


def test_sbatch_array_template_runs_a_plan(tmp_path: Path):
    plan = tmp_path / "todo.txt"
    made = lora("train", "-m", "experiment=smoke", "seed=0,1", f"runs_dir={tmp_path}",
                f"hydra.sweeper.plan_file={plan}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert len(plan.read_text().splitlines()) == 2
    job = subprocess.run(
        ["sbatch", "--parsable", "--array=1-2", "--gpus-per-node=0", "--mem=1G", "--cpus-per-task=1",
         str(ROOT / "slurm/array.sbatch"), str(plan)],
        cwd=tmp_path, env={**env(), "LORA_REPRO": f"{sys.executable} -m lora_repro.cli"},
        capture_output=True, text=True, check=True,
    ).stdout.strip().split(";")[0]  # fmt: skip
    _wait_gone(job, 240)
    recs = [json.loads(p.read_text()) for p in tmp_path.rglob("result.json")]
    out = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert sorted((r["config"]["seed"], r["status"]) for r in recs) == [
        (0, "success"),
        (1, "success"),
    ], out
    assert all(r["environment"]["slurm_job_id"] for r in recs)
    replan = lora("train", "-m", "experiment=smoke", "seed=0,1", f"runs_dir={tmp_path}",
                  f"hydra.sweeper.plan_file={plan}")  # fmt: skip
    assert "2 runs: 2 done" in replan.stderr and plan.read_text() == ""


def test_preempted_run_is_requeued_and_resumes_from_its_checkpoint(tmp_path: Path):
    # 160 steps of batch 4 on the fixture's 32 rows: a checkpoint at every epoch end (8 steps), so one
    # exists soon after the start, long before the end
    args = ["train", "-m", "experiment=smoke", *CPU_ONLY, f"runs_dir={tmp_path}", "seed=7",
            "train.batch_size=4", "train.max_steps=160", "train.eval_every=160"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "lora_repro.cli", *args], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.time() + 180
        while not list(tmp_path.glob("smoke/**/checkpoint/step-*")):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        job = subprocess.run(["squeue", "-h", "-n", "smoke", "-o", "%i"], capture_output=True,
                             text=True, check=True).stdout.split()[0]  # fmt: skip
        # what Slurm sends before a time limit (submitit's --signal=USR2@...): submitit runs the
        # launcher's checkpoint() hook, which resubmits the same call, and requeues the job
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        while "BeginTime" not in subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"],
                                                capture_output=True, text=True).stdout:  # fmt: skip
            assert time.time() < deadline, "the job was not requeued"
            time.sleep(0.5)
        # Slurm holds a requeued job for ~2 minutes before it may start again; start it now
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    (rec,) = [json.loads(p.read_text()) for p in tmp_path.rglob("result.json")]
    assert rec["status"] == "success" and rec["cost"]["steps"] == 160
    assert rec["run"]["resumed_from_step"] > 0, "the requeued job resumed from its checkpoint"


def test_a_run_that_fails_in_setup_leaves_a_failed_record_and_a_failed_job(tmp_path: Path):
    """Bad data in one run of a sweep: the run's folder gets a `failed` record with the one-line
    error, its Slurm job exits non-zero (sacct FAILED), and the sweep summary prints the error."""
    good = ROOT / "tests/fixtures/glue/SST-2"
    bad = tmp_path / "bad-SST-2"
    bad.mkdir()
    (bad / "dev.tsv").write_text((good / "dev.tsv").read_text())
    lines = (good / "train.tsv").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t7"  # a label SST-2 does not have
    (bad / "train.tsv").write_text("\n".join(lines) + "\n")
    runs = tmp_path / "runs"
    # (task.data_dir is not part of a run's identity: the two runs differ by seed)
    res = lora("train", "-m", "experiment=smoke", *CPU_ONLY, f"runs_dir={runs}",
               f"task.data_dir={bad}", "seed=3,4")  # fmt: skip
    log = res.stdout + res.stderr
    assert res.returncode == 1, log
    recs = [json.loads(p.read_text()) for p in runs.rglob("result.json")]
    assert [r["status"] for r in recs] == ["failed", "failed"], log
    rec = recs[0]
    assert rec["error"].startswith("ConfigError: ") and "label '7'" in rec["error"], rec["error"]
    assert rec["environment"]["slurm_job_id"]
    assert f": failed: {rec['error']}" in log, log  # the sweep names the error, not just "failed"
    job = rec["environment"]["slurm_job_id"]
    deadline = time.time() + 60
    while True:  # sacct learns the exit code a moment after the job ends
        state = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True,
                               text=True).stdout.split()  # fmt: skip
        if (state and state[0] != "RUNNING") or time.time() > deadline:
            break
        time.sleep(1)
    assert state and state[0] == "FAILED", state


# SGD instead of AdamW in every process (Python imports sitecustomize at start-up): its update is
# linear in the gradient, so a mis-scaled loss across processes shows (as tests/test_train_ddp.py).
SGD = "import torch.optim\n\ntorch.optim.AdamW = torch.optim.SGD\n"
PARITY = ["experiment=smoke", "train.device=cpu", "train.lr=0.5", "train.max_steps=8",
          "train.eval_every=4", "train.checkpoint_every=4", "logging.log_every=1",
          "+model.arch.hidden_dropout_prob=0", "+model.arch.attention_probs_dropout_prob=0"]  # fmt: skip


def _sgd_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SGD)
    return {**env(), "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}


def _run(args: list[str], e: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_repro.cli", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _same_run(one: Path, two: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    (a,) = [json.loads(p.read_text()) for p in one.rglob("result.json")]
    (b,) = [json.loads(p.read_text()) for p in two.rglob("result.json")]
    assert a["run"]["id"] == b["run"]["id"] and a["config_hash"] == b["config_hash"]
    for key, value in a["metrics"]["best"].items():
        assert abs(b["metrics"]["best"][key] - value) < 1e-5, key
    wa = load_file(str(one / a["run"]["id"] / "adapter.safetensors"))
    wb = load_file(str(two / b["run"]["id"] / "adapter.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() < 1e-4, name
    return a, b


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_run_on_two_slurm_tasks_is_one_distributed_job_that_matches_one_process(
    tmp_path, strategy
):
    """cluster.tasks_per_node=2: one array element, two srun tasks, one torch.distributed (gloo)
    job, DDP or FSDP: one folder, one record (rank 0 writes), the 1-process weights and metrics."""
    e = _sgd_env(tmp_path)
    single = _run(["train", *PARITY, f"runs_dir={tmp_path / 'one'}"], e)
    assert single.returncode == 0, single.stderr[-3000:]
    two = _run(["train", "-m", *PARITY, *CPU_ONLY, "cluster.tasks_per_node=2",
                f"train.strategy={strategy}", f"runs_dir={tmp_path / 'two'}"], e)  # fmt: skip
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    a, b = _same_run(tmp_path / "one", tmp_path / "two")
    assert (a["environment"]["world_size"], b["environment"]["world_size"]) == (1, 2)
    assert b["environment"]["slurm_job_id"]
    assert len(list((tmp_path / "two").rglob("result.json"))) == 1


def test_a_run_killed_on_one_process_resumes_on_two_slurm_tasks(tmp_path):
    """A checkpoint is resumable on another process count: kill a 1-process run after its first
    checkpoint, relaunch it as 2 Slurm tasks: it resumes there and ends where an uninterrupted
    1-process run ends (no dropout, so the RNG streams do not matter)."""
    e = _sgd_env(tmp_path)
    args = [*PARITY, "train.batch_size=4", "train.max_steps=160", "train.eval_every=40",
            "train.checkpoint_every=8"]  # fmt: skip
    ref = _run(["train", *args, f"runs_dir={tmp_path / 'ref'}"], e)
    assert ref.returncode == 0, ref.stderr[-3000:]
    cut = ["train", *args, f"runs_dir={tmp_path / 'cut'}"]
    proc = subprocess.Popen([sys.executable, "-m", "lora_repro.cli", *cut], cwd=ROOT, env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "cut").glob("smoke/**/checkpoint/step-*")):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert not list((tmp_path / "cut").rglob("result.json")), "finished before the kill"
    again = _run(["train", "-m", *cut[1:], *CPU_ONLY, "cluster.tasks_per_node=2"], e)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    _, b = _same_run(tmp_path / "ref", tmp_path / "cut")
    assert b["status"] == "success" and b["environment"]["world_size"] == 2
    assert b["run"]["resumed_from_step"] > 0
