"""Measure what projecting only the loss's positions through the LM head saves on the E2E study's
training steps (issue #19), side by side in one process.

    python experiments/e2e_smollm2/speed.py [--methods lora full] [--steps 8] [--threads 1]

On the real SmolLM2-135M and the study's own training batches (the real E2E pairs, length-grouped,
batch 8, bf16 autocast, as `experiment=e2e_smollm2`), each method's training step (forward, loss,
backward, fused AdamW step) is timed with the whole sequence's logits and with the window's
(build.Built.forward: transformers' `logits_to_keep`), in alternating blocks over the same batches.
Writes speed.md and speed.json under --out and prints the Markdown. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lora_repro.atomic import write_atomic  # noqa: E402
from lora_repro.batching import epoch_order, lengths  # noqa: E402
from lora_repro.build import build  # noqa: E402
from lora_repro.compose import values  # noqa: E402
from lora_repro.config import RunConfig  # noqa: E402
from lora_repro.distributed import Runtime, cpu_name  # noqa: E402
from lora_repro.losses import lm_window, loss_sum  # noqa: E402


def steps(method: str, n: int, blocks: int, runs: Path) -> dict:
    data_dir = ROOT.parent / "shared" / "data" / "e2e"
    cfg = RunConfig.from_dict(values([
        "experiment=e2e_smollm2", f"method_recipe=smollm2/{method}", f"task.data_dir={data_dir}",
        f"runs_dir={runs}", "seed=0",
    ]))  # fmt: skip
    rt = Runtime.start("cpu", cfg.train.precision)
    b = build(cfg, rt.device)
    t, data = cfg.train, b.data
    order = epoch_order(len(data.train), cfg.seed, 0, t.batch_size, lengths(data.train))
    batches = [data.collate([data.train[i] for i in order[k * t.batch_size : (k + 1) * t.batch_size]])
               for k in range(n)]  # fmt: skip
    params = [p for p in b.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    variants = {"all positions": dataclasses.replace(b, trim_logits=False), "loss window": b}
    clock = {name: [0.0, 0.0, 0] for name in variants}  # wall s, CPU s, tokens

    def step(built, batch) -> None:
        with rt.autocast():
            logits, labels = built.forward(b.model, batch)
            loss = loss_sum(logits, labels, "lm", cfg.task.label_smoothing)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(b, batches[0])  # allocate the optimizer state, warm the kernels
    for _ in range(blocks):
        for name, built in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for batch in batches:
                step(built, batch)
            clock[name][0] += time.perf_counter() - t0
            clock[name][1] += time.process_time() - c0
            clock[name][2] += sum(int(x["attention_mask"].sum()) for x in batches)
    kept = sum(lm_window(x["labels"]) for x in batches) / sum(x["labels"].shape[1] for x in batches)
    out = {"method": method, "trainable": b.counts["trainable_params"], "steps": n * blocks,
           "positions_kept": kept, "variants": []}  # fmt: skip
    for name, (wall, cpu, tokens) in clock.items():
        out["variants"].append({"variant": name, "tokens_per_s": tokens / wall,
                                "wall_s_per_step": wall / (n * blocks),
                                "cpu_s_per_step": cpu / (n * blocks)})  # fmt: skip
        print(f"  {method:12s} {name:14s} {tokens / wall:7.1f} tok/s", flush=True)
    return out


def markdown(res: dict) -> str:
    lines = [f"### LM-head window on SmolLM2-135M E2E training steps (batch 8, bf16 autocast, "
             f"{res['threads']} thread(s), torch {torch.__version__}, {res['cpu']})", "",
             "| method | trainable | positions kept | logits of | tokens/s | s / step | CPU s / step | "
             "CPU s vs all positions |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in res["methods"]:
        ref = m["variants"][0]
        for v in m["variants"]:
            lines.append(f"| {m['method']} | {m['trainable']:,} | {m['positions_kept']:.0%} | "
                         f"{v['variant']} | {v['tokens_per_s']:.1f} | {v['wall_s_per_step']:.2f} | "
                         f"{v['cpu_s_per_step']:.2f} | "
                         f"{v['cpu_s_per_step'] / ref['cpu_s_per_step']:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--methods", nargs="+", default=["lora", "full"],
                   choices=["lora", "full", "adapter_lin", "prefix_layer"])  # fmt: skip
    p.add_argument("--steps", type=int, default=8, help="batches per block")
    p.add_argument("--blocks", type=int, default=2, help="alternations of the two variants")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "e2e_smollm2_speed"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        res = {"threads": args.threads, "cpu": cpu_name(),
               "methods": [steps(m, args.steps, args.blocks, Path(tmp)) for m in args.methods]}  # fmt: skip
    out = Path(args.out)
    write_atomic(out / "speed.json", json.dumps(res, indent=1) + "\n")
    write_atomic(out / "speed.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
