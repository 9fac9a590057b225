"""Processes and seeds for one run: torchrun's or Slurm's environment -> a Runtime (rank, world,
device, compute dtype), rank-0-only decisions shared with every rank, and the seeds that make a run
repeatable.

Two launchers give one run several processes: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*) and
Slurm (`cluster.tasks_per_node` / `cluster.nodes`: submitit starts the tasks with srun, each with
SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS and the node list). For Slurm, submitit's
TorchDistributedEnvironment turns its variables into torchrun's (master: the first node; port: from
the job id), so the rest of the code sees one environment.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lora_repro.errors import ConfigError

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where this process computes: its rank among `world` processes, its device, and the autocast
    dtype of train.precision (float32: no autocast)."""

    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype = torch.float32

    @classmethod
    def start(cls, device: str, precision: str) -> Runtime:
        limit_threads()
        rank, world, dev = setup_distributed(device)
        dtype = DTYPES[precision]
        if dev.type == "cpu" and dtype == torch.float16:
            raise ConfigError(
                "train.precision=fp16 needs a GPU (CPU autocast in fp16 is slow and needs a grad "
                "scaler); valid on CPU: fp32, bf16"
            )
        # Whether bf16 pays without AMX depends on the chip, not the flags (bf16_speedup). Where it
        # costs time, say so, but do what was asked: a study keeps one precision across machines
        # (issue #18).
        unsure = dev.type == "cpu" and dtype == torch.bfloat16 and cpu_bf16() != "amx"
        if unsure and (speedup := bf16_speedup()) < 1:
            log.warning("train.precision=bf16 on this CPU (%s): a bf16 matmul takes %.1fx fp32's "
                        "time here; train.precision=fp32 is faster", cpu_name(), 1 / speedup)  # fmt: skip
        return cls(rank, world, dev, dtype)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self) -> Any:
        """Mixed precision for the forward pass: weights and optimizer stay fp32, matmuls run in
        `dtype` (bf16 on CPU uses AVX512-BF16/AMX kernels where the CPU has them)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def limit_threads() -> int | None:
    """Give torch as many threads as Slurm gave the task CPUs (SLURM_CPUS_PER_TASK), unless
    OMP_NUM_THREADS says otherwise. Left alone, torch starts a thread per core of the node: two
    1-CPU runs on a 2-core node then run four threads whose OpenMP barriers spin against each other
    (seen on the local Slurm: SmolLM2 AdapterL at 15 tokens/s instead of ~160). Returns the count
    set, or None."""
    n = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if not n.isdigit() or int(n) < 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    torch.set_num_threads(int(n))
    return int(n)


@functools.cache  # once per process: the CPU and the thread count do not change
def bf16_speedup() -> float:
    """fp32's time over bf16's for one matmul of MiniLM's feed-forward shape (512 tokens x 384 by
    384 x 1536) on this CPU at this thread count: above 1 where bf16 autocast saves time. Measured,
    not read off the flags: with AVX512-BF16 and no AMX, a bf16 matmul took 1.9x fp32's time on a
    Xeon and 0.2x on an AMD EPYC (docs/runs.md). About 50 ms."""
    import time

    def best(a: torch.Tensor, b: torch.Tensor) -> float:
        a @ b  # the first call builds oneDNN's kernel
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    x, w = torch.randn(512, 384), torch.randn(384, 1536)
    return best(x, w) / best(x.bfloat16(), w.bfloat16())


@functools.cache  # the CPU does not change within a process; cpu_name reads it twice per record
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}


def cpu_bf16(info: dict[str, str] | None = None) -> str | None:
    """How this CPU runs bf16 matmuls: "amx" (AMX tiles: bf16 autocast ran MiniLM at 2.4x fp32's
    tokens/s, results/mini_speed), "avx512_bf16" (dot-product instructions only: slower than fp32
    on one Xeon, much faster on an AMD EPYC; bf16_speedup measures it), "native" (oneDNN has bf16
    kernels; no /proc/cpuinfo says which), or None (emulated)."""
    flags = set((_cpuinfo() if info is None else info).get("flags", "").split())
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    try:
        return "native" if not flags and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def cpu_name() -> str:
    """The CPU model and its bf16 support, e.g. "Intel(R) Xeon(R) Processor, bf16: amx": records
    and benchmarks carry it, since the studies' machines change between sessions and bf16's cost
    depends on it."""
    import platform

    model = _cpuinfo().get("model name") or platform.processor() or platform.machine()
    return f"{model}, bf16: {cpu_bf16() or 'emulated'}"


def slurm_tasks() -> int:
    """Tasks of the srun step this process is one of (1 outside one; the batch script itself is not
    a step, so `lora-repro train` typed inside an allocation stays one process)."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)


def export_slurm_environment() -> bool:
    """torchrun's variables from Slurm's, when this is one task of a multi-task step and torchrun
    did not set them already (torchrun inside Slurm wins). True when it exported them."""
    if "RANK" in os.environ or slurm_tasks() <= 1:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    # Every task sees all of the node's GPUs; it takes cuda:LOCAL_RANK (setup_distributed).
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("Slurm task %d of %d (master %s:%d)", env.rank, env.world_size, env.master_addr,
             env.master_port)  # fmt: skip
    return True


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's or Slurm's environment; gloo on CPU, nccl on
    GPU."""
    export_slurm_environment()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device 'cuda' but no CUDA device is visible; valid here: auto, cpu"
        )
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda and local >= torch.cuda.device_count():
        raise ConfigError(
            f"process LOCAL_RANK={local} has no GPU of its own ({torch.cuda.device_count()} visible); "
            "valid: torchrun --nproc_per_node <= the GPU count, or train.device=cpu"
        )
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, dev


def gather(obj: Any, world: int) -> list[Any]:
    """`obj` of every rank, in rank order."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Any, rank: int, world: int) -> Any:
    """Run `fn` on rank 0 only (file system decisions) and share its result, or its ConfigError."""
    result: list[Any] = [None]
    if rank == 0:
        try:
            result = [("ok", fn())]
        except ConfigError as exc:
            result = [("error", str(exc))]
    if world > 1:
        dist.broadcast_object_list(result, src=0)
    kind, value = result[0]
    if kind == "error":
        raise ConfigError(value)
    return value


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and every GPU): model init, LoRA's A and dropout follow it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
