"""The paper's tables rebuilt from results/ alone, side by side with the printed numbers.

A cell reads `ours ±spread [n] (paper)`: ours is the centre over seeds of each run's best-epoch value
(the paper's protocol: the median of 5 seeds for GLUE, Table 2; the mean of 3 for E2E, Table 3), the
spread is the sample standard deviation over seeds, n the number of successful runs, followed by how
many runs of that cell failed. A cell with no successful run reads "–". The parameter column is the
method's |Θ| from the records (the task head excluded, as the paper counts it), then the paper's.

GPT-3 175B is out of reach: Tables 5 and 6 are analogues on the RoBERTa and GPT-2 families, printed next
to the paper's GPT-3 numbers (separate columns or rows, never paired as if they were the same model).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.analysis import results
from lora_repro.analysis.results import Cell, Getter, fill, value
from lora_repro.atomic import write_atomic
from lora_repro.errors import ConfigError, check_choice
from lora_repro.paths import PAPER_DIR
from lora_repro.sweep import parse_kv

GLUE = {
    "mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA",
    "qnli": "QNLI", "qqp": "QQP", "rte": "RTE", "stsb": "STS-B",
}  # fmt: skip
PAPER_METHOD = {"full_topk": "full_top2"}  # our method name -> the paper CSVs' (FTTop2, Table 3)
SETTING = {"table2_houlsby": "houlsby_setup"}  # experiment -> Table 2 `setting` (default: paper)
ARMS = ["q8", "k8", "v8", "o8", "qk4", "qv4", "qkvo2"]  # Table 5's order


@dataclass
class Table:
    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines += ["|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes]).rstrip() + "\n"

    def latex(self) -> str:
        def esc(s: str) -> str:
            for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"),
                         ("#", "\\#"), ("±", "$\\pm$"), ("–", "--")):  # fmt: skip
                s = s.replace(a, b)
            return s

        out = [f"% {self.title}", *(f"% {n}" for n in self.notes)]
        out += [f"\\begin{{tabular}}{{l{'r' * (len(self.header) - 1)}}}", "\\toprule"]
        out += [" & ".join(esc(h) for h in self.header) + " \\\\", "\\midrule"]
        out += [" & ".join(esc(c) for c in r) + " \\\\" for r in self.rows]
        return "\n".join([*out, "\\bottomrule", "\\end{tabular}"]) + "\n"


def headline(task: str | None = None) -> Getter:
    """The score of a run in the analogue tables: GLUE's primary dev metric ×100 (as Table 2), test
    BLEU for generation tasks (E2E stands in for WikiSQL)."""
    glue, nlg = value(task, "primary", 100.0), value(task, "BLEU")
    return lambda run: glue(run) if run["task"] in GLUE else nlg(run)


def params(df: pd.DataFrame, paper: Any = None) -> str:
    """Median method |Θ| of these runs in millions, then the paper's."""
    v = df["method_params"].dropna() if "method_params" in df else pd.Series(dtype=float)
    out = "–" if v.empty else f"{statistics.median(v) / 1e6:.2f}M"
    return out if paper is None or pd.isna(paper) else f"{out} ({float(paper):g}M)"


def match(paper: pd.DataFrame, model: str, method: str, setting: str | None, n: float | None,
          used: set[Any]) -> pd.Series | None:  # fmt: skip
    """The paper row for our (model, method): same setting (our `paper` runs also match the `prior`
    rows the paper quotes for its baselines), then the closest parameter count."""
    c = paper[(paper["model"] == model) & (paper["method"] == PAPER_METHOD.get(method, method))]
    c = c[~c.index.isin(used)]
    if setting is not None and "setting" in c:
        c = c[c["setting"].isin(("paper", "prior") if setting == "paper" else (setting,))]
    if c.empty:
        return None
    if n is None or pd.isna(n):
        return c.iloc[0]
    return c.loc[(c["trainable_params_m"] - n / 1e6).abs().idxmin()]


def versus_paper(df: pd.DataFrame, paper: pd.DataFrame, cols: dict[str, tuple[Getter, str, int]],
                 how: str, with_setting: bool, avg: bool = False) -> tuple[list[list[str]], list[str]]:  # fmt: skip
    """Rows (model, method tag) next to the paper's rows (Tables 2, 3). cols: label -> (getter, paper
    column, digits). Paper rows of a model we ran but a method we did not show as "paper only"."""
    getters = {k: g for k, (g, _, _) in cols.items()}
    cells = fill(df, lambda r: (r["model"], r["experiment"], r["method"], r["method_tag"]), getters)
    rows, used = [], set()
    order = {m: i for i, m in enumerate(dict.fromkeys(paper["model"]))}  # the paper's row order
    for (model, exp, method, tag), row in sorted(
        cells.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])
    ):
        runs = df[(df["model"] == model) & (df["experiment"] == exp) & (df["method_tag"] == tag)]
        setting = SETTING.get(exp, "paper") if with_setting else None
        n = runs["method_params"].median() if runs["method_params"].notna().any() else None
        p = match(paper, model, method, setting, n, used)
        used.add(None if p is None else p.name)
        name = tag if setting in (None, "paper") else f"{tag} ({setting})"
        out = [model, name, params(runs, None if p is None else p["trainable_params_m"])]
        for col, (_, pcol, digits) in cols.items():
            row[col].paper = None if p is None else p[pcol]
            out.append(row[col].text(how, digits))
        if avg:  # the paper's Avg: mean over the tasks, only when every task has a value
            c = [row[k].centre(how) for k in cols]
            mean = "–" if None in c else f"{statistics.fmean(c):.1f}"
            out.append(mean + ("" if p is None else f" ({p['avg']:.1f})"))
        rows.append(out)
    missing: dict[str, list[str]] = {}
    for i, p in paper.iterrows():
        setting = p.get("setting", "paper")
        what = p["method"] + ("" if setting in ("paper", "prior") else f" ({setting})")
        if i in used:
            continue
        if p["model"] not in set(df["model"]):  # a model we did not run: one note, not empty rows
            missing.setdefault(p["model"], []).append(f"{what} {p['trainable_params_m']:g}M")
            continue
        out = [p["model"], f"{what} (paper only)", params(df.iloc[:0], p["trainable_params_m"])]
        out += [Cell(paper=p[pcol]).text(how, d) for _, pcol, d in cols.values()]
        rows.append(out + ([f"– ({p['avg']:.1f})"] if avg else []))
    notes = [
        "params: the method's trainable parameters |Θ| in millions (head excluded), ours (paper)"
    ]
    return rows, notes + [f"not run: {m} ({', '.join(w)})" for m, w in missing.items()]


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


def arm(run: pd.Series) -> str:
    return f"{run['targets']}{int(run['r'])}" if pd.notna(run.get("r")) else str(run["method_tag"])


def _arm_label(a: str) -> str:
    letters = a.rstrip("0123456789")
    return ", ".join(f"W{c}" for c in letters) + f" r={a[len(letters) :]}" if letters else a


def table5(df: pd.DataFrame) -> Table:
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
             "(validation accuracy)"]  # fmt: skip
    header = ["weights", *cols, "GPT-3 WikiSQL (paper)", "GPT-3 MultiNLI (paper)"]
    return Table("table5", "Table 5 analogue: which weight matrices", header, rows, notes)


def at_rank(r: int) -> Getter:
    get = headline()
    return lambda run: get(run) if run["r"] == r else None


def table6(df: pd.DataFrame) -> Table:
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
             "the first r tried (§4.1), so α/r shrinks as r grows, as in the paper"]  # fmt: skip
    return Table(
        "table6", "Table 6 analogue: rank r", ["model", "task", "weights", *cols], rows, notes
    )


T18 = {"val_loss": ("loss", 2), "BLEU": ("BLEU", 2), "NIST": ("NIST", 4), "METEOR": ("METEOR", 4),
       "ROUGE_L": ("ROUGE_L", 4), "CIDEr": ("CIDEr", 4)}  # fmt: skip


def table18(df: pd.DataFrame) -> Table:
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
             "in [0, 1], as Table 18 prints them); mean over seeds ±sd [n runs] (paper: GPT-2 medium)"]  # fmt: skip
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


def environments(df: pd.DataFrame) -> str:
    """Which environment produced the runs: one, or each of several with its run count (mixed
    environments are marked, since a library release can move a number)."""
    envs = df["env"].value_counts()
    if len(envs) == 1:
        return f"environment: {envs.index[0]} (all {int(envs.iloc[0])} runs)"
    return "MIXED environments: " + "; ".join(f"{e} ({int(n)} runs)" for e, n in envs.items())


def write(table: Table, out_dir: str | Path) -> list[Path]:
    """<out_dir>/<name>.md and .tex, each via a temp file and os.replace (never half-written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, text in (("md", table.markdown()), ("tex", table.latex())):
        paths.append(write_atomic(out / f"{table.name}.{ext}", text))
    return paths


def main(argv: list[str]) -> int:
    """`lora-repro tables <table>|all [experiments=a,b] [results_dir=results] [out_dir=results/tables]`:
    Markdown on stdout, .md and .tex files under out_dir."""
    words, o = parse_kv(argv, {"experiments": "", "results_dir": "results", "out_dir": ""})
    if len(words) != 1:
        raise ConfigError(f"give one table name or `all`; valid: {', '.join(TABLES)}")
    names = list(TABLES) if words[0] == "all" else [words[0]]
    check_choice("table", names[0], TABLES)
    exps = [e for e in o["experiments"].split(",") if e] or None
    for name in names:
        table = build(name, o["results_dir"], exps)
        print(table.markdown())
        paths = write(table, o["out_dir"] or Path(o["results_dir"]) / "tables")
        print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0
