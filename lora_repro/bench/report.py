"""Derived numbers of a bench record (ratios, latency overheads, targets) and its outputs:
bench.json (raw), bench.md (tables), bench.png (plot), all written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lora_repro.atomic import write_atomic

# The targets the bench prints (never asserted: timings depend on the machine).
# (name, numerator, denominator, quantity, threshold)
TARGETS = [
    ("LoRA / frozen-backbone bound, step time", "lora", "frozen", "time", 1.10),
    ("LoRA / PEFT LoRA, step time", "lora", "peft_lora", "time", 1.00),
    ("LoRA / PEFT LoRA, peak memory", "lora", "peft_lora", "mem", 1.00),
    ("LoRA / full fine-tuning, step time", "lora", "full", "time", 0.75),
]
MERGED_TOLERANCE_PCT = 2.0  # merged LoRA adds no inference latency (§4.1): within 2% of base
MIB = 2**20


def _value(row: dict, quantity: str) -> float | None:
    if quantity == "time":
        return row.get("step_time_s")
    if quantity == "cpu":  # process CPU time: less sensitive than wall time to other load
        return row.get("step_cpu_time_s")
    mem = row.get("memory") or {}
    return mem.get("peak_mem_bytes")


def ratio(rows: dict[str, dict], num: str, den: str, quantity: str) -> float | None:
    a = _value(rows.get(num, {}), quantity)
    b = _value(rows.get(den, {}), quantity)
    return a / b if a is not None and b else None


def finish(record: dict[str, Any]) -> None:
    """Add ratios (per model), latency overheads against base, and the targets to the record."""
    by_model: dict[str, dict[str, dict]] = {}
    for row in record["train"]:
        by_model.setdefault(row["model"], {})[row["method"]] = row
    for rows in by_model.values():
        for row in rows.values():
            for den in ("frozen", "full"):
                for q in ("time", "cpu", "mem"):
                    row[f"{q}_vs_{den}"] = ratio(rows, row["method"], den, q)
    base = {
        (r["batch"], r["seq_len"]): r["median_ms"]
        for r in record["latency"]
        if r["variant"] == "base"
    }
    for r in record["latency"]:
        b = base.get((r["batch"], r["seq_len"]))
        r["overhead_pct"] = 100 * (r["median_ms"] / b - 1) if b else None
    targets = []
    for model, rows in by_model.items():
        for name, num, den, q, limit in TARGETS:
            value = ratio(rows, num, den, q)
            targets.append(
                {
                    "model": model,
                    "target": name,
                    "value": value,
                    "limit": limit,
                    "met": None if value is None else value <= limit,
                    "cpu_time_value": ratio(rows, num, den, "cpu") if q == "time" else None,
                }
            )
    for r in record["latency"]:
        if r["variant"] == "lora_merged" and r["overhead_pct"] is not None:
            targets.append(
                {
                    "model": r["model"],
                    "target": f"merged LoRA latency vs base, {r['batch']}x"
                    f"{r['seq_len']} (|overhead| %)",
                    "value": abs(r["overhead_pct"]),
                    "limit": MERGED_TOLERANCE_PCT,
                    "met": abs(r["overhead_pct"]) <= MERGED_TOLERANCE_PCT,
                }
            )
    record["targets"] = targets


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _spread(seconds: list[float] | None) -> str:
    """Median with the range, so a reader sees how much the machine's load moved the timings."""
    if not seconds:
        return "–"
    ms = sorted(1e3 * t for t in seconds)
    mid = ms[len(ms) // 2] if len(ms) % 2 else (ms[len(ms) // 2 - 1] + ms[len(ms) // 2]) / 2
    return f"{mid:.0f} [{ms[0]:.0f}–{ms[-1]:.0f}]"


def _mib(n: int | None, spec: str) -> str:
    return "–" if n is None else format(n / MIB, spec)


def _count(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def markdown(record: dict[str, Any]) -> str:
    env, s = record["environment"], record["settings"]
    mem_kind = next(
        (
            r["memory"].get("memory_kind")
            for r in record["train"]
            if r.get("memory", {}).get("memory_kind")
        ),
        "not measured",
    )
    lines = [
        "# lora-repro bench",
        "",
        f"Device: {env['device']}"
        + (f" ({env['gpu']})" if env.get("gpu") else "")
        + f", {env['threads']} threads, {s['precision']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, peft {env['peft']}; git {env.get('git_sha')}. Random weights.",
        f"Training step = forward + backward + AdamW step + zero_grad; median of {s['steps']} "
        f"interleaved steps after {s['warmup']} warm-up round(s). Peak memory: {mem_kind}, one fresh "
        f"process per row over {s['memory_steps']} steps. `frozen` = backbone frozen, head trainable, "
        "gradients flowing to the outputs of the matrices LoRA adapts (LoRA minus A and B).",
    ]
    by_model: dict[str, list[dict]] = {}
    for row in record["train"]:
        by_model.setdefault(row["model"], []).append(row)
    for model, rows in by_model.items():
        r0 = rows[0]
        lines += [
            "",
            f"## {model} ({r0['head']} head), batch {r0['batch']} x length {r0['seq_len']}",
            "",
            "| method | trainable | checkpoint (MiB) | step ms: median [min–max] | step CPU ms | tokens/s | "
            "peak mem (MiB) | time / frozen | mem / frozen | time / full |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r.get("status", "ok") != "ok":
                error = r.get("error", "").replace("|", "/")[:100]
                lines.append(f"| {r['method']} | failed: {error} |" + " |" * 8)
                continue
            mem = r.get("memory", {})
            lines.append(
                f"| {r['method']} | {_count(r.get('trainable_params'))} | "
                f"{_mib(mem.get('checkpoint_bytes'), '.2f')} | "
                f"{_spread(r.get('step_s'))} | "
                f"{_fmt(1e3 * r['step_cpu_time_s'] if r.get('step_cpu_time_s') else None, '.0f')} | "
                f"{_fmt(r.get('tokens_per_s'), '.0f')} | "
                f"{_mib(mem.get('peak_mem_bytes'), '.0f')} | "
                f"{_fmt(r.get('time_vs_frozen'), '.3f')} | {_fmt(r.get('mem_vs_frozen'), '.3f')} | "
                f"{_fmt(r.get('time_vs_full'), '.3f')} |"
            )
    if record["latency"]:
        variants = list(dict.fromkeys(r["variant"] for r in record["latency"]))
        cells = list(dict.fromkeys((r["batch"], r["seq_len"]) for r in record["latency"]))
        get = {(r["variant"], r["batch"], r["seq_len"]): r for r in record["latency"]}
        lines += [
            "",
            f"## Inference latency, {record['latency'][0]['model']} (forward, median of "
            f"{s['latency_steps']}, ms; overhead vs base as in the paper's Table 1)",
            "",
            "| batch x length | " + " | ".join(variants) + " |",
            "|---|" + "---|" * len(variants),
        ]
        for b, n in cells:
            row = []
            for v in variants:
                r = get.get((v, b, n))
                row.append(
                    "–"
                    if r is None
                    else f"{r['median_ms']:.1f}"
                    + ("" if v == "base" else f" ({_fmt(r['overhead_pct'], '+.1f')}%)")
                )
            lines.append(f"| {b} x {n} | " + " | ".join(row) + " |")
    lines += [
        "",
        "## Targets",
        "",
        "| model | target | value | limit | met | same in CPU time |",
        "|---|---|---|---|---|---|",
    ]
    for t in record.get("targets", []):
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(
            f"| {t['model']} | {t['target']} | {_fmt(t['value'], '.3f')} | {t['limit']} | {met} | "
            f"{_fmt(t.get('cpu_time_value'), '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def _grouped_bars(ax: Any, rows: list[dict], cells: list, key: str, skip_base: bool) -> None:
    every = list(dict.fromkeys(r["variant"] for r in rows))
    variants = [v for v in every if v != "base" or not skip_base]
    get = {(r["variant"], r["batch"], r["seq_len"]): r.get(key) for r in rows}
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        values = [get.get((v, b, n)) or 0 for b, n in cells]
        color = f"C{every.index(v) % 10}"  # the same colour for a variant in both panels
        ax.bar([k + j * width for k in range(len(cells))], values, width, label=v, color=color)
    centers = [k + width * (len(variants) - 1) / 2 for k in range(len(cells))]
    ax.set_xticks(centers, [f"{b}x{n}" for b, n in cells])


def plot(record: dict[str, Any], path: Path) -> None:
    """Step time and peak memory per method (one row per model), latency overhead per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in record["train"]))
    n_rows = len(models) + (1 if record["latency"] else 0)
    fig, axes = plt.subplots(n_rows, 2, figsize=(12, 3.2 * n_rows), squeeze=False)
    for i, model in enumerate(models):
        rows = [r for r in record["train"] if r["model"] == model and r.get("step_time_s")]
        names = [r["method"] for r in rows]
        colors = [
            "tab:red" if n in ("lora", "peft_lora") else "tab:gray" if n == "frozen" else "tab:blue"
            for n in names
        ]
        axes[i][0].barh(names, [1e3 * r["step_time_s"] for r in rows], color=colors)
        axes[i][0].set_xlabel("training step (ms, median)")
        axes[i][0].set_title(
            f"{model}, batch {rows[0]['batch']} x {rows[0]['seq_len']}" if rows else model
        )
        mem = [(r["method"], r.get("memory", {}).get("peak_mem_bytes")) for r in rows]
        mem = [(n, v / MIB) for n, v in mem if v is not None]
        axes[i][1].barh(
            [n for n, _ in mem], [v for _, v in mem], color=[colors[names.index(n)] for n, _ in mem]
        )
        axes[i][1].set_xlabel("peak memory (MiB)" if mem else "peak memory not measured")
        for ax in axes[i]:
            ax.invert_yaxis()
    if record["latency"]:
        cells = list(dict.fromkeys((r["batch"], r["seq_len"]) for r in record["latency"]))
        for ax, key, label, skip_base in (
            (axes[-1][0], "overhead_pct", "latency overhead vs base (%)", True),
            (axes[-1][1], "median_ms", "forward latency (ms, median)", False),
        ):
            _grouped_bars(ax, record["latency"], cells, key, skip_base)
            ax.set_ylabel(label)
        axes[-1][0].axhline(0, color="black", lw=0.5)
        axes[-1][0].set_title(f"inference latency, {record['latency'][0]['model']}")
        axes[-1][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write(record: dict[str, Any], out: Path) -> list[Path]:
    """bench.json, bench.md and bench.png under `out`, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md", out / "bench.png"]
    write_atomic(paths[0], lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    write_atomic(paths[1], lambda p: p.write_text(markdown(record)))
    write_atomic(paths[2], lambda p: plot(record, p))
    return paths
