"""The paper's tables rebuilt from results/ alone, side by side with the printed numbers.

Cells read `ours ±spread [n] (paper)` (table.py says how they are filled and matched to the paper).

GPT-3 175B is out of reach: Tables 5 and 6 are analogues on the RoBERTa and GPT-2 families, printed next
to the paper's GPT-3 numbers (separate columns or rows, never paired as if they were the same model).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from lora_repro.analysis import results
from lora_repro.analysis.results import Cell, Getter, fill, value
from lora_repro.analysis.table import (
    GLUE,
    Table,
    environments,
    headline,
    versus_paper,
    write,
)
from lora_repro.errors import check_choice
from lora_repro.paths import PAPER_DIR

ARMS = ["q8", "k8", "v8", "o8", "qk4", "qv4", "qkvo2"]  # Table 5's order


def table2(df: pd.DataFrame) -> Table:
    paper = pd.read_csv(PAPER_DIR / "table2_glue.csv")
    # A study of none of the paper's models (e.g. `mini`) shows only the tasks it ran.
    ours_only = df.empty or not set(df["model"]) & set(paper["model"])
    tasks = [t for t in GLUE if not ours_only or t in set(df["task"])] or list(GLUE)
    cols = {GLUE[t]: (value(t, "primary", 100.0), GLUE[t], 1) for t in tasks}
    rows, notes = versus_paper(df, paper, cols, "median", with_setting=True, avg=True)
    notes.insert(0, "GLUE dev, ×100: MNLI matched acc, CoLA Matthews corr, STS-B Pearson, others acc; "
                 "median over seeds of each run's best epoch ±sd [n runs] (paper)")  # fmt: skip
    return Table(
        "table2", "Table 2: GLUE", ["model", "method", "params", *cols, "Avg"], rows, notes
    )


E2E = {"BLEU": ("BLEU", 1.0, 1), "NIST": ("NIST", 1.0, 2), "METEOR": ("METEOR", 100.0, 1),
       "ROUGE-L": ("ROUGE_L", 100.0, 1), "CIDEr": ("CIDEr", 1.0, 2)}  # fmt: skip


def table3(df: pd.DataFrame) -> Table:
    paper = pd.read_csv(PAPER_DIR / "table3_e2e.csv")
    cols = {k: (value("e2e", name, s), k, d) for k, (name, s, d) in E2E.items()}
    rows, notes = versus_paper(df, paper, cols, "mean", with_setting=False)
    notes.insert(0, "E2E NLG test; METEOR and ROUGE-L ×100; mean over seeds ±sd [n runs] (paper)")
    return Table(
        "table3", "Table 3: GPT-2 on E2E NLG", ["model", "method", "params", *cols], rows, notes
    )


def lora_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The LoRA runs of `df` (Tables 5, 6 and 18 compare LoRA settings) and a note naming what else
    the experiments hold, so a mixed sweep's table is LoRA's rows, not garbage."""
    if df.empty or "method" not in df:
        return df, []
    keep = df["method"] == "lora"
    others = sorted(set(df.loc[~keep, "method"].dropna()))
    note = (
        [f"LoRA runs only; left out: {int((~keep).sum())} run(s) of {', '.join(others)}"]
        if others
        else []
    )
    return df[keep], note


def arm(run: pd.Series) -> str:
    return f"{run['targets']}{int(run['r'])}" if pd.notna(run.get("r")) else str(run["method_tag"])


def _arm_label(a: str) -> str:
    letters = a.rstrip("0123456789")
    return ", ".join(f"W{c}" for c in letters) + f" r={a[len(letters) :]}" if letters else a


def table5(df: pd.DataFrame) -> Table:
    df, left_out = lora_runs(df)
    paper = pd.read_csv(PAPER_DIR / "table5_which_matrices.csv")
    combos = sorted({(m, t) for m, t in zip(df["model"], df["task"], strict=True)})
    cols = {f"{m} {GLUE.get(t, t)}": headline(t) for m, t in combos}
    cells = fill(df[df["model"].isin([m for m, _ in combos])], arm, cols) if combos else {}
    keys = ARMS + sorted(set(cells) - set(ARMS))  # the paper's arms in its order, then any others
    rows = []
    for a in keys:
        row = cells.get(a, {c: Cell() for c in cols})
        p = paper[paper["weights"] + paper["rank"].astype(str) == a]
        ref = [f"{p.iloc[0][k]:.1f}" if len(p) else "" for k in ("WikiSQL", "MultiNLI")]
        rows.append([_arm_label(a), *(row[c].text("median", 1) for c in cols), *ref])
    notes = ["Same budget in every row: r·|W| = 8 rank-units per layer; GLUE: primary dev metric ×100, "
             "E2E: test BLEU; median over seeds ±sd [n runs]; last two columns: the paper's GPT-3 175B "
             "(validation accuracy)", *left_out]  # fmt: skip
    header = ["weights", *cols, "GPT-3 WikiSQL (paper)", "GPT-3 MultiNLI (paper)"]
    return Table("table5", "Table 5 analogue: which weight matrices", header, rows, notes)


def at_rank(r: int) -> Getter:
    get = headline()
    return lambda run: get(run) if run["r"] == r else None


def table6(df: pd.DataFrame) -> Table:
    df, left_out = lora_runs(df)
    paper = pd.read_csv(PAPER_DIR / "table6_rank.csv")
    ranks = (
        sorted({*(int(r) for r in df["r"].dropna()), 1, 2, 4, 8, 64})
        if not df.empty
        else [1, 2, 4, 8, 64]
    )
    cols = {f"r={r}": at_rank(r) for r in ranks}
    cells = fill(
        df, lambda run: (run["model"], GLUE.get(run["task"], run["task"]), run["targets"]), cols
    )
    rows = [[m, t, ", ".join(f"W{c}" for c in w), *(row[c].text("median", 1) for c in cols)]
            for (m, t, w), row in sorted(cells.items())]  # fmt: skip
    for _, p in paper.iterrows():
        rows.append(["GPT-3 175B (paper)", p["task"], ", ".join(f"W{c}" for c in p["weights"]),
                     *(f"{p[f'r{r}']:.1f}" if f"r{r}" in p else "" for r in ranks)])  # fmt: skip
    notes = ["GLUE: primary dev metric ×100, E2E: test BLEU; median over seeds ±sd [n runs]; α fixed at "
             "the first r tried (§4.1), so α/r shrinks as r grows, as in the paper", *left_out]  # fmt: skip
    return Table(
        "table6", "Table 6 analogue: rank r", ["model", "task", "weights", *cols], rows, notes
    )


T18 = {"val_loss": ("loss", 2), "BLEU": ("BLEU", 2), "NIST": ("NIST", 4), "METEOR": ("METEOR", 4),
       "ROUGE_L": ("ROUGE_L", 4), "CIDEr": ("CIDEr", 4)}  # fmt: skip


def table18(df: pd.DataFrame) -> Table:
    df, left_out = lora_runs(df)
    paper = pd.read_csv(PAPER_DIR / "table18_e2e_rank.csv").set_index("rank")
    cols = {k: value("e2e", name) for k, (name, _) in T18.items()}
    cells = fill(df, lambda run: (run["model"], int(run["r"])), cols)
    models = sorted({m for m, _ in cells}) or ["gpt2-medium"]
    rows = []
    for model in models:
        for r in sorted(
            {r for m, r in cells if m == model}
            | (set(paper.index) if model == "gpt2-medium" else set())
        ):
            row = cells.get((model, r), {c: Cell() for c in cols})
            for c in cols:
                row[c].paper = (
                    paper.loc[r, c] if model == "gpt2-medium" and r in paper.index else None
                )
            rows.append([model, str(r), *(row[c].text("mean", d) for c, (_, d) in T18.items())])
    notes = ["E2E: validation loss at the best epoch; generation metrics on test (METEOR and ROUGE-L "
             "in [0, 1], as Table 18 prints them); mean over seeds ±sd [n runs] (paper: GPT-2 medium)",
             *left_out]  # fmt: skip
    return Table(
        "table18", "Table 18: GPT-2 medium on E2E vs rank r", ["model", "r", *cols], rows, notes
    )


def at_lr(lr: float) -> Getter:
    get = headline()
    return lambda run: get(run) if run["lr"] == lr else None


def lr_sweep(df: pd.DataFrame) -> Table:
    """A learning-rate sweep: one row per (model, task, method), one column per learning rate, the
    best column of each row in bold (how `mini_lr` chose each method's lr)."""
    lrs = sorted({float(lr) for lr in df.get("lr", []) if pd.notna(lr)})
    cols = {f"lr={lr:g}": at_lr(lr) for lr in lrs}
    cells = fill(
        df, lambda run: (run["model"], GLUE.get(run["task"], run["task"]), run["method_tag"]), cols
    )
    rows = []
    for (model, task, tag), row in sorted(cells.items()):
        centres = {c: row[c].centre("median") for c in cols}
        best = max(
            ((v, c) for c, v in centres.items() if v is not None and not math.isnan(v)),
            default=(0, None),
        )[1]
        rows.append([model, task, tag] + [("**" + row[c].text("median", 1) + "**") if c == best
                                          else row[c].text("median", 1) for c in cols])  # fmt: skip
    notes = ["GLUE: primary dev metric ×100 (E2E: test BLEU), median over seeds [n runs]; bold: the "
             "row's best learning rate"]  # fmt: skip
    return Table("lr", "Learning-rate sweep", ["model", "task", "method", *cols], rows, notes)


COST_COLS = {  # header -> (record field, format)
    "params": ("method_params", "{:,.0f}"),
    "trainable": ("trainable_params", "{:,.0f}"),
    "total": ("total_params", "{:,.0f}"),
    "peak mem (GiB)": ("peak_memory_bytes", lambda v: f"{v / 2**30:.2f}"),
    "tokens/s": ("tokens_per_s", "{:,.0f}"),
    "adapter (MiB)": ("adapter_bytes", lambda v: f"{v / 2**20:.2f}"),
}


def cost(df: pd.DataFrame) -> Table:
    """Parameters and memory across methods (no paper column: the paper prints no such table)."""
    rows = []
    for (model, tag), runs in df.groupby(["model", "method_tag"], sort=True):
        ok = runs[runs["status"] == "success"]
        row = [model, tag]
        for col, fmt in COST_COLS.values():
            v = ok[col].dropna() if col in ok else pd.Series(dtype=float)
            med = statistics.median(v) if len(v) else None
            row.append("–" if med is None else fmt(med) if callable(fmt) else fmt.format(med))
        failed = len(runs) - len(ok)
        rows.append([*row, f"{len(ok)}" + (f", {failed} failed" if failed else "")])
    kinds = sorted(set(df["peak_memory_kind"].dropna())) if "peak_memory_kind" in df else []
    notes = ["medians over successful runs; peak memory: " + (", ".join(kinds) or "as recorded")]
    header = ["model", "method", *COST_COLS, "runs"]
    return Table("params", "Parameters and memory across methods", header, rows, notes)


# name -> (experiments read by default, builder)
TABLES: dict[str, tuple[tuple[str, ...], Callable[[pd.DataFrame], Table]]] = {
    "table2": (("table2_glue", "table2_houlsby"), table2),
    "table3": (("table3_e2e",), table3),
    "table5": (("table5_matrices",), table5),
    "table6": (("table6_rank",), table6),
    "table18": (("table18_e2e_rank",), table18),
    "lr": (("mini_lr",), lr_sweep),
    "params": ((), cost),  # () = every results/*.jsonl
}


def build(
    name: str, results_dir: str | Path = "results", experiments: list[str] | None = None
) -> Table:
    """Table `name` from results/<experiment>.jsonl of its experiments (or the given ones)."""
    default, builder = TABLES[name]
    exps = experiments or list(default) or sorted(p.stem for p in Path(results_dir).glob("*.jsonl"))
    df = results.load(exps, results_dir)
    if df.empty:
        df = pd.DataFrame(columns=list(results.flatten({}).keys()))
    table = builder(df)
    if df.attrs.get("duplicates"):
        table.notes.append(f"{df.attrs['duplicates']} duplicate record(s) counted once")
    table.notes.append("from " + ", ".join(f"results/{e}.jsonl" for e in exps))
    if len(df):
        table.notes.append(environments(df))
    return table


def main(argv: list[str]) -> int:
    """`lora-repro tables TABLE|all [--experiments a,b] [--results-dir results] [--out-dir DIR]`:
    Markdown on stdout, .md and .tex files under --out-dir (default <results-dir>/tables)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="lora-repro tables",
        description="Rebuild a paper table from results/<experiment>.jsonl alone, cells "
        "'ours (paper)': Markdown on stdout, .md and .tex files.",
    )
    p.add_argument("table", help=f"one of: {', '.join(TABLES)}, all")
    p.add_argument("--experiments", default="", help="comma-separated (default: the table's own)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default="", help="default: <results-dir>/tables")
    args = p.parse_args(argv)
    names = list(TABLES) if args.table == "all" else [args.table]
    check_choice("table", names[0], TABLES)
    exps = [e for e in args.experiments.split(",") if e] or None
    for name in names:
        table = build(name, args.results_dir, exps)
        print(table.markdown())
        paths = write(table, args.out_dir or Path(args.results_dir) / "tables")
        print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0
