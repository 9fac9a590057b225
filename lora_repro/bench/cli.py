"""`lora-repro bench`: trainable parameters, training-step time, tokens/s, peak memory and checkpoint
bytes of every method on full-size architectures with random weights, next to the frozen-backbone bound
and PEFT's LoRA; and forward latency of base vs LoRA merged/unmerged vs adapters (the paper's Table 1).

Each measurement runs in a fresh worker process (`python -m lora_repro.bench --one <json>`): one per
model for the interleaved step timings, one per model x method for peak memory (a process's peak
resident memory is only meaningful for a single configuration), one for the latency grid. Peak memory
is per process (RSS, or CUDA's max_memory_allocated), so `--memory-jobs N` may run N of those at once;
timings never overlap anything.

Usage: lora-repro bench [--models roberta-base,gpt2-medium] [--batch 8] [--seq-len 128]
       [--methods frozen,lora,peft_lora,full] [--grid small|paper|1x128,8x128] [--out results/bench]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lora_repro.atomic import write_atomic
from lora_repro.errors import ConfigError, check_choice, check_positive
from lora_repro.paths import REPO

log = logging.getLogger(__name__)

# Table 1 of the paper: GPT-2 medium forward latency at batch x length 32x512, 16x256, 1x128.
GRIDS = {"small": [(1, 128), (8, 128)], "paper": [(32, 512), (16, 256), (1, 128)]}


# The loss a family trains with by default: GPT-2 is the paper's NLG model (§5.4, Table 1).
def _parse_grid(text: str) -> list[tuple[int, int]]:
    if text in GRIDS:
        return GRIDS[text]
    try:
        grid = [tuple(int(v) for v in cell.lower().split("x")) for cell in text.split(",")]
    except ValueError:
        grid = []
    if not grid or any(len(c) != 2 or min(c) < 1 for c in grid):
        raise ConfigError(f"bad --grid {text!r}; valid: small, paper, or BxL[,BxL...] e.g. 1x128")
    return grid  # type: ignore[return-value]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lora-repro bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", default="roberta-base", help="comma-separated conf/model names")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override applied to every model, e.g. model.arch.num_hidden_layers=12",
    )
    p.add_argument(
        "--head",
        default="auto",
        help="auto (lm for GPT-2, else classification) | classification | lm",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated; default: frozen, every registered method, peft_lora",
    )
    p.add_argument("--batch", type=int, default=4, help="training batch size")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per training sequence")
    p.add_argument("--warmup", type=int, default=1, help="training rounds not timed")
    p.add_argument("--steps", type=int, default=3, help="timed training rounds (median)")
    p.add_argument("--memory-steps", type=int, default=2, help="steps per peak-memory process")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument(
        "--memory-jobs",
        type=int,
        default=1,
        help="peak-memory processes at once (each one's peak is its own; mind host/GPU memory)",
    )
    p.add_argument("--latency-model", default="gpt2-medium", help="'none' skips latency")
    p.add_argument("--grid", default="1x64,4x64", help="small, paper, or BxL[,BxL...]")
    p.add_argument("--latency-warmup", type=int, default=1, help="forward rounds not timed")
    p.add_argument("--latency-steps", type=int, default=5, help="timed forward rounds")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 (autocast)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (None: all cores)")
    p.add_argument("--out", default="results/bench", help="folder for bench.{json,md,png}")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # worker: one JSON job spec
    args = p.parse_args(argv)
    if args.one is None:
        for name in ("batch", "seq_len", "steps", "memory_steps", "memory_jobs", "latency_steps"):
            check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
        check_choice("--device", args.device, ("auto", "cpu", "cuda"))
        check_choice("--precision", args.precision, ("fp32", "bf16"))
        check_choice("--head", args.head, ("auto", "classification", "lm"))
        args.grid_cells = _parse_grid(args.grid)
    return args


def _device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA device; valid here: auto, cpu")
    return ("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_worker(spec: dict, workdir: Path) -> dict:
    """Run one job in a fresh Python process and return its JSON (or a failure record)."""
    out = workdir / f"job-{uuid.uuid4().hex}.json"  # unique: memory workers may run concurrently
    spec = {**spec, "result": str(out)}
    env = dict(os.environ)
    root = str(REPO)  # import this checkout's lora_repro
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lora_repro.bench", "--one", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    log.info(
        "%s %s %s: %.0fs",
        spec["job"],
        spec["model"],
        ",".join(spec["methods"]),
        time.perf_counter() - t0,
    )
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(out.read_text())


def _one(spec: dict) -> int:
    from lora_repro.bench import measure as m

    jobs = {"train": m.time_training, "memory": m.measure_memory, "latency": m.time_latency}
    try:
        result = jobs[spec["job"]](spec)
    except Exception as exc:  # recorded by the parent (e.g. out of memory), never lost
        log.exception("job failed")
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    write_atomic(spec["result"], json.dumps(result))
    return 0


def environment(device: str, threads: int, precision: str) -> dict[str, Any]:
    """The run records' environment (record.environment) plus what a timing depends on."""
    import torch

    from lora_repro.distributed import cpu_name
    from lora_repro.record import environment as run_environment

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # peft_lora rows then record the import error
        peft_version = None
    return {
        **run_environment(device, precision, world_size=1),
        "device": device,  # "cpu" | "cuda"; the model name is under cpu / gpu
        "peft": peft_version,
        "threads": threads,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
    }


def _checkpoint(record: dict[str, Any], out: Path) -> None:
    """Rows so far, so that hours of measurements survive an interrupted run (removed at the end)."""
    write_atomic(out / "bench.partial.json", json.dumps(record, indent=1) + "\n")


def _head(args: argparse.Namespace, family: str) -> str:
    from lora_repro.models import FAMILIES

    return args.head if args.head != "auto" else FAMILIES[family].default_head


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every job of the benchmark, assembled into one record (bench.report adds ratios/targets)."""
    from lora_repro.bench.measure import median
    from lora_repro.bench.variants import SPECIAL, model_config, registered_methods
    from lora_repro.methods import METHODS

    valid = registered_methods()
    methods = valid if args.methods is None else args.methods.split(",")
    for name in methods:
        check_choice("bench method", name, valid)
    if any(x in SPECIAL for x in methods):  # both are defined by our LoRA's config
        check_choice("method needed by frozen/peft_lora", "lora", METHODS)
    device, threads = _device(args.device), args.threads or _threads()
    if device == "cpu" and hasattr(os, "getloadavg") and os.getloadavg()[0] > _threads():
        # Each op's OpenMP threads wait for one another; on a busy machine that waiting, not the
        # method, dominates many-small-op methods (LoRA, adapters). Single-thread timings hold up.
        log.warning(
            "load average %.1f exceeds %d cores: timings will be distorted by other "
            "processes (--threads 1 suffers least)",
            os.getloadavg()[0],
            _threads(),
        )
    models = args.models.split(",")
    lat_model = None if args.latency_model == "none" else args.latency_model
    family = {n: model_config(n, args.set).family for n in [*models, *filter(None, [lat_model])]}
    common = {"overrides": args.set, "device": device, "precision": args.precision}
    common.update(threads=threads, seed=0)
    record: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("one", "grid_cells")},
        "environment": environment(device, threads, args.precision),
        "train": [],
        "latency": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        for name in models:
            shape = {"model": name, "head": _head(args, family[name])}
            shape.update(batch=args.batch, seq_len=args.seq_len, methods=methods)
            job = {**common, **shape, "job": "train", "warmup": args.warmup, "steps": args.steps}
            timing = run_worker(job, work)
            rows = []
            for meth in methods:
                row = {**shape, "method": meth, **timing.get(meth, timing)}
                del row["methods"]
                if row.get("step_s"):
                    row["step_time_s"] = median(row["step_s"])
                    row["step_cpu_time_s"] = median(row["step_cpu_s"])
                    row["tokens_per_s"] = args.batch * args.seq_len / row["step_time_s"]
                    log.info("%s %s: %.3f s/step", name, meth, row["step_time_s"])
                rows.append(row)
            if not args.no_memory:  # after the timings, so that they never overlap them
                mem = {**common, **shape, "job": "memory", "steps": args.memory_steps}
                specs = [{**mem, "methods": [meth]} for meth in methods]
                with ThreadPoolExecutor(args.memory_jobs) as pool:
                    peaks = pool.map(lambda s: run_worker(s, work), specs)
                    for row, peak in zip(rows, peaks, strict=True):
                        row["memory"] = peak
            record["train"].extend(rows)
            _checkpoint(record, Path(args.out))
        if lat_model:
            job = {**common, "job": "latency", "model": lat_model, "methods": methods}
            job.update(head=_head(args, family[lat_model]), grid=args.grid_cells)
            job.update(warmup=args.latency_warmup, steps=args.latency_steps)
            lat = run_worker(job, work)
            record["latency_status"] = lat.get("status", "ok")
            for row in lat.get("rows", []):
                row.update(model=lat_model, median_ms=1e3 * median(row["ms"]))
                row["ms"] = [1e3 * t for t in row["ms"]]
                record["latency"].append(row)
    return record


def main(argv: list[str] | None = None) -> int:
    """Benchmark every method's training step (time, tokens/s, peak memory, trainable params,
    checkpoint bytes) against the frozen-backbone bound and PEFT's LoRA, and the forward latency of
    LoRA merged/unmerged and adapters. Flags (python -m lora_repro.bench --help lists all): --models,
    --methods, --batch, --seq-len, --steps, --grid small|paper|BxL,..., --device, --precision, --out."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    quiet = args.one is not None  # a worker's stderr only matters when it fails
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=fmt)
    if args.one is not None:
        return _one(json.loads(args.one))
    from lora_repro.bench import report as bench_report

    record = run(args)
    bench_report.finish(record)
    paths = bench_report.write(record, Path(args.out))
    (Path(args.out) / "bench.partial.json").unlink(missing_ok=True)
    print(bench_report.markdown(record))
    print("\n".join(f"wrote {p}" for p in paths))
    return 0
