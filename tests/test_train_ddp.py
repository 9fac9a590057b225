"""The CLI under torchrun trains with DDP: 2 CPU processes (gloo) with the same global batch reach the
same weights and metrics as 1 process, up to float rounding (the 2-process run also accumulates over 2
micro-batches, so DDP's no_sync path is exercised)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import toytask
from safetensors.torch import load_file

from lora_repro import train

TESTS = str(Path(__file__).parent)
# No dropout: two processes draw different masks than one. 2 epochs of 12 steps, global batch 8.
ARGS = [
    "+model.arch.hidden_dropout_prob=0", "+model.arch.attention_probs_dropout_prob=0",
    "train.max_steps=null", "train.epochs=2", "train.lr=0.5", "train.weight_decay=0.1",
    "train.device=cpu",  # gloo parity on any machine (a 1-GPU box cannot host 2 nccl ranks)
]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env() -> dict[str, str]:
    """This checkout first on the path, one thread per process (2 processes on 2 cores)."""
    root = str(Path(__file__).parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _sgd_toy_cli(tmp_path: Path, runs: str) -> tuple[Path, list[str]]:
    """An entry script running the CLI on the toy task with SGD in place of AdamW, and the base
    overrides of a run under tmp_path/<runs>."""
    script = tmp_path / "entry.py"
    script.write_text("import torch; torch.optim.AdamW = torch.optim.SGD; "
                      + toytask.SUBPROCESS.format(tests=TESTS))  # fmt: skip
    base = [
        "experiment=smoke",
        "task.name=toy",
        f"runs_dir={tmp_path / runs}",
        "train.eval_every=null",
    ]
    return script, [*base, "task.train_limit=null", "task.eval_limit=null"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tmp_path, monkeypatch, strategy):
    """DDP (a copy per process) and FSDP2 (every block sharded over the 2 processes, frozen base
    included; adapters and checkpoints gathered to full tensors) both give the 1-process run."""
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    # SGD instead of AdamW: its update is linear in the gradient, so a mis-scaled loss (the per-process
    # or per-micro-batch normalisation) shows; Adam would normalise it away.
    monkeypatch.setattr(torch.optim, "AdamW", torch.optim.SGD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train.run(toytask.config(tmp_path / "one", *ARGS))
    finally:
        torch.set_num_threads(threads)

    script, base = _sgd_toy_cli(tmp_path, "two")
    base += ["logging.log_every=1"]
    proc = subprocess.run(
        [
            *TORCHRUN,
            str(script),
            "train",
            *base,
            *ARGS,
            "train.grad_accum=2",  # 2 micro-batches of 2
            f"train.strategy={strategy}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "two" / single["run"]["id"]
    double = json.loads((folder / "result.json").read_text())
    assert double["environment"]["world_size"] == 2 and single["environment"]["world_size"] == 1
    assert double["metrics"]["best_step"] == single["metrics"]["best_step"]
    for key, value in single["metrics"]["best"].items():
        assert abs(double["metrics"]["best"][key] - value) < 1e-6, key
    one = load_file(str(tmp_path / "one" / single["run"]["id"] / "adapter.safetensors"))
    two = load_file(str(folder / "adapter.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=1e-4), name
    assert any(not torch.equal(v, torch.zeros_like(v)) for n, v in two.items() if ".B." in n)
    # one record, written by rank 0 only
    assert proc.stdout.count("run: ") == 1


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun's second process on a one-GPU machine gets a one-line error, not a CUDA crash."""
    from lora_repro.distributed import setup_distributed
    from lora_repro.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=1 has no GPU of its own \(1 visible\)"):
        setup_distributed("auto")


def test_fsdp_checkpoint_resumes_on_one_process(tmp_path, monkeypatch):
    """A 2-process FSDP run killed after a mid-run checkpoint resumes as 1 plain process and ends
    where an uninterrupted 1-process run ends: the checkpoint holds full tensors and a name-keyed
    optimizer state, whatever wrote it (SGD, no dropout: the RNG streams do not matter)."""
    import signal
    import time

    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    monkeypatch.setattr(torch.optim, "AdamW", torch.optim.SGD)
    args = [*ARGS, "train.epochs=3", "train.checkpoint_every=5", "logging.log_every=1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train.run(toytask.config(tmp_path / "one", *args))
    finally:
        torch.set_num_threads(threads)
    script, base = _sgd_toy_cli(tmp_path, "cut")
    env = _env()
    folder = tmp_path / "cut" / single["run"]["id"]
    proc = subprocess.Popen([*TORCHRUN, str(script), "train", *base, *args, "train.strategy=fsdp"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name[5:]) for p in (folder / "checkpoint").glob("step-*")]
        if steps and max(steps) >= 15:
            # torchrun's workers run in sessions of their own: kill every process of this script
            subprocess.run(["pkill", "-9", "-f", str(script)], check=False)
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    time.sleep(1)  # a surviving worker would write its record now
    assert not (folder / "result.json").exists(), "the FSDP run ended before it was killed"
    again = subprocess.run([sys.executable, str(script), "train", *base, *args], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((folder / "result.json").read_text())
    assert resumed["run"]["resumed_from_step"] >= 15 and resumed["environment"]["world_size"] == 1
    for key, value in single["metrics"]["best"].items():
        assert abs(resumed["metrics"]["best"][key] - value) < 1e-6, key
    one = load_file(str(tmp_path / "one" / single["run"]["id"] / "adapter.safetensors"))
    two = load_file(str(folder / "adapter.safetensors"))
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=1e-4), name


def test_fsdp_nlg_run_decodes_with_an_unsharded_copy_like_one_process(tmp_path):
    """FSDP shards the base, so after training rank 0 decodes with an unsharded copy carrying the
    best adapter: the same hypotheses and scores as a 1-process run (tiny GPT-2, full fine-tuning)."""
    fix = Path(__file__).parent / "fixtures" / "nlg" / "e2e"
    args = ["train", "model=tiny-gpt2", "task=e2e", f"task.data_dir={fix}", "method=full",
            "task.files={train: valid.txt, validation: valid.txt, test: test.txt}",
            "task.max_length=128", "task.train_limit=32", "task.eval_limit=4",
            "task.beam_size=2", "task.max_new_tokens=8", "task.generate_metrics=[BLEU,NIST]",
            "train.batch_size=4", "train.max_steps=6", "train.eval_every=2", "train.lr=1e-2",
            "train.warmup_steps=0", "train.device=cpu", "logging.progress=false",
            "+model.arch.resid_pdrop=0", "+model.arch.embd_pdrop=0", "+model.arch.attn_pdrop=0"]  # fmt: skip
    env = _env()
    one = subprocess.run([sys.executable, "-m", "lora_repro.cli", *args, f"runs_dir={tmp_path / 'one'}"],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*TORCHRUN, "-m", "lora_repro.cli", *args, "train.strategy=fsdp",
                          f"runs_dir={tmp_path / 'two'}"], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    (a,) = (tmp_path / "one").rglob("result.json")
    (b,) = (tmp_path / "two").rglob("result.json")
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert (
        rb["environment"]["world_size"] == 2
        and ra["metrics"]["best_step"] == rb["metrics"]["best_step"]
    )
    assert abs(ra["metrics"]["primary"] - rb["metrics"]["primary"]) < 1e-6
    hyp = "generate/test.hyp.txt"
    assert (a.parent / hyp).read_text() == (b.parent / hyp).read_text()


def test_a_slurm_task_uses_the_cpus_slurm_gave_it(monkeypatch):
    """Two 1-CPU runs on one node must not each start a thread per core of the node."""
    from lora_repro.distributed import Runtime, limit_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        torch.set_num_threads(2)
        Runtime.start("cpu", "fp32")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting wins
        torch.set_num_threads(2)
        assert limit_threads() is None and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("SLURM_CPUS_PER_TASK")  # outside Slurm: torch's default
        assert limit_threads() is None
    finally:
        torch.set_num_threads(before)
