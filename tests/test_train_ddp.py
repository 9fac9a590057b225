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


def test_two_process_ddp_matches_one_process(tmp_path, monkeypatch):
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

    script = tmp_path / "entry.py"
    sgd = "import torch; torch.optim.AdamW = torch.optim.SGD; "
    script.write_text(sgd + toytask.SUBPROCESS.format(tests=TESTS))
    base = ["experiment=smoke", "task.name=toy", f"runs_dir={tmp_path / 'two'}"]
    base += ["train.eval_every=null", "task.train_limit=null", "task.eval_limit=null"]
    base += ["logging.log_every=1"]
    root = str(Path(__file__).parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script), "train", *base, *ARGS, "train.grad_accum=2"],  # 2 micro-batches of 2
        env=env,
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
