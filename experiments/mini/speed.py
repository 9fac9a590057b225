"""Measure the CPU speed-ups the converged mini study uses, side by side in one process (issue #18).

    python experiments/mini/speed.py [--rows 2000] [--threads 1] [--out results/mini_speed]

On the real MiniLM-L6 and real SST-2 (../shared/data/glue or $GLUE_DIR), one epoch of a seeded
`--rows` subset at batch 32, full dev evaluation, one thread (as the study's Slurm runs):
  1. whole runs, full fine-tuning and LoRA: fp32 -> bf16 autocast -> bf16 + length-grouped batches,
     from each run's record: tokens/s (real tokens), training time, CPU-seconds, wall time;
  2. evaluation of the dev set in file order vs longest first (batching.by_length);
  3. building the run (tokenise + model) with a cold vs a warm token cache (data/cache.py);
  4. one AdamW step over full fine-tuning's parameters, foreach vs the fused kernel train.py uses.
`--sections` runs some of them (default: all). Writes speed.md and speed.json under --out and prints the Markdown. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lora_repro import batching, evaluate  # noqa: E402
from lora_repro.atomic import write_atomic  # noqa: E402
from lora_repro.build import build  # noqa: E402
from lora_repro.compose import values  # noqa: E402
from lora_repro.config import RunConfig  # noqa: E402
from lora_repro.distributed import Runtime, cpu_name  # noqa: E402
from lora_repro.train import run  # noqa: E402

RECIPES = {"full": ["mini=full"], "lora": ["mini=lora"]}
VARIANTS = {
    "fp32": [],
    "bf16": ["train.precision=bf16"],
    "bf16 + grouped": ["train.precision=bf16", "train.group_by_length=true"],
}


def config(runs: Path, rows: int, *extra: str) -> RunConfig:
    glue = os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "data" / "glue"))
    base = ["experiment=mini", "task=sst2", f"task.data_dir={glue}/SST-2", f"task.train_limit={rows}",
            "train.epochs=1", f"runs_dir={runs}", "seed=0"]  # fmt: skip
    return RunConfig.from_dict(values([*base, *extra]))


def whole_runs(rows: int, tmp: Path) -> list[dict]:
    out = []
    for method, recipe in RECIPES.items():
        for name, extra in VARIANTS.items():
            rec = run(config(tmp / "runs", rows, *recipe, *extra))
            c, m = rec["cost"], rec["metrics"]
            out.append({"method": method, "variant": name, "tokens_per_s": c["tokens_per_s"],
                        "train_time_s": c["train_time_s"], "cpu_time_s": c["cpu_time_s"],
                        "wall_time_s": c["wall_time_s"], "dev_accuracy": m["primary"]})  # fmt: skip
            print(f"  {method:5s} {name:15s} {c['tokens_per_s']:8.0f} tok/s  "
                  f"cpu {c['cpu_time_s']:6.1f} s  dev {m['primary']:.4f}", flush=True)  # fmt: skip
    return out


def eval_order(rows: int, tmp: Path) -> list[dict]:
    cfg = config(tmp / "e", rows, "mini=lora")
    rt = Runtime.start("cpu", "fp32")
    b = build(cfg, rt.device)
    out = []
    for name, order in (
        ("file order", lambda idx, sizes: list(idx)),
        ("longest first", batching.by_length),
    ):
        evaluate.by_length = order  # the function evaluate() looks up
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = evaluate.evaluate(b.model, b.data, rt, cfg.train.eval_batch_size, b.forward)
        out.append({"order": name, "wall_s": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - c0, "dev_accuracy": metrics["dev/accuracy"]})  # fmt: skip
    evaluate.by_length = batching.by_length
    return out


def setup_cache(rows: int, tmp: Path) -> list[dict]:
    os.environ["LORA_REPRO_CACHE"] = str(tmp / "cache")
    cfg = config(tmp / "s", 10_000, "mini=lora")  # the study's SST-2 size: tokenising matters most
    out = []
    for name in ("cold cache", "warm cache"):
        t0, c0 = time.perf_counter(), time.process_time()
        build(cfg, torch.device("cpu"))
        out.append(
            {"build": name, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        )
    return out


def optimizer_step(rows: int, tmp: Path, steps: int = 20) -> list[dict]:
    cfg = config(tmp / "o", rows, "mini=full")
    params = [p for p in build(cfg, torch.device("cpu")).model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    out = []
    for name, fused in (("foreach", False), ("fused", True)):
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1, fused=fused)
        opt.step()  # the state is allocated on the first step
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            opt.step()
        out.append({"optimizer": name, "params": sum(p.numel() for p in params),
                    "wall_s_per_step": (time.perf_counter() - t0) / steps,
                    "cpu_s_per_step": (time.process_time() - c0) / steps})  # fmt: skip
    return out


def markdown(res: dict) -> str:
    lines = [f"### CPU speed-ups (MiniLM-L6, SST-2, {res['rows']} rows x 1 epoch, batch 32, "
             f"{res['threads']} thread(s), torch {torch.__version__}, {res.get('cpu', 'CPU not recorded')})",
             ""]  # fmt: skip
    if res.get("runs"):
        lines += ["| method | variant | tokens/s | train s | CPU s / run | wall s | dev acc | tokens/s vs fp32 | CPU s vs fp32 |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res.get("runs", []):
        ref = next(x for x in res["runs"] if x["method"] == r["method"] and x["variant"] == "fp32")
        lines.append(f"| {r['method']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {r['train_time_s']:.1f} | "
                     f"{r['cpu_time_s']:.1f} | {r['wall_time_s']:.1f} | {r['dev_accuracy']:.4f} | "
                     f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x | {r['cpu_time_s'] / ref['cpu_time_s']:.2f}x |")  # fmt: skip
    if res.get("eval"):
        lines += _eval(res)
    if res.get("setup"):
        lines += _setup(res)
    if res.get("optimizer"):
        o0, o1 = res["optimizer"]
        lines += ["", f"| one AdamW step, full FT ({o0['params']:,} parameters) | wall s | CPU s |",
                  "|---|---|---|"]  # fmt: skip
        lines += [f"| {o['optimizer']} | {o['wall_s_per_step']:.4f} | {o['cpu_s_per_step']:.4f} |"
                  for o in res["optimizer"]]  # fmt: skip
        lines.append(f"| ratio | {o1['wall_s_per_step'] / o0['wall_s_per_step']:.2f}x | "
                     f"{o1['cpu_s_per_step'] / o0['cpu_s_per_step']:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _eval(res: dict) -> list[str]:
    e0, e1 = res["eval"]
    lines = [
        "",
        "| dev evaluation (872 rows, fp32) | wall s | CPU s | accuracy |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {e['order']} | {e['wall_s']:.2f} | {e['cpu_s']:.2f} | {e['dev_accuracy']:.4f} |"
        for e in res["eval"]
    ]
    lines.append(
        f"| ratio | {e1['wall_s'] / e0['wall_s']:.2f}x | {e1['cpu_s'] / e0['cpu_s']:.2f}x | |"
    )
    return lines


def _setup(res: dict) -> list[str]:
    s0, s1 = res["setup"]
    lines = ["", "| build (10,000 SST-2 rows + dev, model) | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {s['build']} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} |" for s in res["setup"]]
    lines.append(
        f"| ratio | {s1['wall_s'] / s0['wall_s']:.2f}x | {s1['cpu_s'] / s0['cpu_s']:.2f}x |"
    )
    return lines


SECTIONS = {"setup": setup_cache, "eval": eval_order, "runs": whole_runs,
            "optimizer": optimizer_step}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "mini_speed"))
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    # a partial measurement updates its sections of the last full one (speed.json)
    old = json.loads((out / "speed.json").read_text()) if (out / "speed.json").is_file() else {}
    # bf16's gain depends on the CPU (docs/runs.md): sections from another CPU are not comparable
    now = {"rows": args.rows, "threads": args.threads, "cpu": cpu_name()}
    res = {**old, **now} if all(old.get(k) == v for k, v in now.items()) else now
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sections:
            res[name] = SECTIONS[name](args.rows, Path(tmp))
    write_atomic(out / "speed.json", json.dumps(res, indent=1) + "\n")
    write_atomic(out / "speed.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
