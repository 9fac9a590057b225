"""A table (rows, notes; Markdown and LaTeX) and how its cells meet the paper's numbers.

A cell reads `ours ±spread [n] (paper)`: ours is the centre over seeds of each run's best-epoch value
(the paper's protocol: the median of 5 seeds for GLUE, Table 2; the mean of 3 for E2E, Table 3), the
spread is the sample standard deviation over seeds, n the number of successful runs, followed by how
many runs of that cell failed. A cell with no successful run reads "–". The parameter column is the
method's |Θ| from the records (the task head excluded, as the paper counts it), then the paper's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.analysis.results import Cell, Getter, fill, value
from lora_repro.atomic import write_atomic

GLUE = {
    "mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA",
    "qnli": "QNLI", "qqp": "QQP", "rte": "RTE", "stsb": "STS-B",
}  # fmt: skip
PAPER_METHOD = {"full_topk": "full_top2"}  # our method name -> the paper CSVs' (FTTop2, Table 3)
# Paper rows a method also fills: Table 2's AdptD rows (Rücklé et al. 2020) are bottleneck adapters on
# RoBERTa-base (conf/method_recipe/roberta-base/adapter_drop_*), which prints no other adapter row.
PAPER_ALSO = {"adapter_pfeiffer": "adapter_drop", "adapter_houlsby": "adapter_drop"}
SETTING = {"table2_houlsby": "houlsby_setup"}  # experiment -> Table 2 `setting` (default: paper)


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
    names = (PAPER_METHOD.get(method, method), PAPER_ALSO.get(method))
    c = paper[(paper["model"] == model) & paper["method"].isin(names)]
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
