"""Tables from synthetic records (a failed run, a missing seed, duplicates), checked against numbers
worked out by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_repro.analysis import results, tables
from lora_repro.cli import main


def rec(model: str, task: str, tag: str, seed: int, primary: float | None, status: str = "success",
        params: int = 294_912, exp: str = "table2_glue", started: str = "2026-01-01T00:00:00",
        r: int = 8, targets: str = "qv", gen: dict | None = None, **cost) -> dict:  # fmt: skip
    """A record shaped like record.RunRecord's (schema 1: no schema key)."""
    method = tag.split("_")[0]
    return {
        "status": status,
        "error": None if status == "success" else "RuntimeError: boom",
        "run": {
            "id": f"{exp}/{model}/{task}/{tag}/lr0.0005_bs16_ep1/s{seed}",
            "experiment": exp,
            "started": started,
        },
        "config": {
            "experiment": exp,
            "seed": seed,
            "model": {"name": model},
            "task": {"name": task},
            "method": {"name": method, "targets": targets, "r": r},
            "train": {"lr": 0.0005},
        },
        "config_hash": f"h-{exp}-{model}-{task}-{tag}-{seed}",
        "task": {"name": task, "version": "1"},
        "metrics": {
            "primary_metric": "dev/accuracy",
            "primary": primary if status == "success" else None,
            "best": {"dev/accuracy": primary, "dev/loss": 0.5} if status == "success" else {},
            **({"generation": gen} if gen else {}),
        },
        "cost": {
            "method_params": params,
            "trainable_params": params + 1538,
            "total_params": 125_000_000,
            "peak_memory_bytes": 2**30,
            "peak_memory_kind": "cuda_max_allocated",
            "tokens_per_s": 1000.0,
            "adapter_bytes": 2**20,
            **cost,
        },
    }


LORA = "lora_qv_r8_a8"


@pytest.fixture
def table2_records() -> list[dict]:
    out = [
        rec("roberta-base", "sst2", LORA, s, v)
        for s, v in enumerate([0.95, 0.94, 0.96, 0.93, 0.95])
    ]
    out.append(rec("roberta-base", "sst2", LORA, 0, 0.95))  # duplicate of seed 0: counted once
    # MRPC: seed 4 missing, seed 2 failed, and seed 1 also has a failed earlier attempt (success wins)
    out += [rec("roberta-base", "mrpc", LORA, 0, 0.88), rec("roberta-base", "mrpc", LORA, 1, 0.90)]
    out += [rec("roberta-base", "mrpc", LORA, 1, None, "failed", started="2025-12-31T00:00:00")]
    out += [
        rec("roberta-base", "mrpc", LORA, 2, None, "failed"),
        rec("roberta-base", "mrpc", LORA, 3, 0.89),
    ]
    out += [rec("roberta-base", "sst2", "bitfit", 0, 0.93, params=102_144)]
    return out


def test_frame_dedups_success_first(table2_records):
    df = results.frame(table2_records)
    assert df.attrs["duplicates"] == 2
    assert len(df) == 5 + 4 + 1
    mrpc1 = df[(df["task"] == "mrpc") & (df["seed"] == 1)]
    assert list(mrpc1["status"]) == ["success"] and mrpc1["primary"].item() == 0.90


def test_table2_by_hand(table2_records):
    t = tables.table2(results.frame(table2_records))
    assert t.header[:4] == ["model", "method", "params", "MNLI"] and t.header[-1] == "Avg"
    lora = next(r for r in t.rows if r[1] == LORA)
    col = {h: lora[i] for i, h in enumerate(t.header)}
    # SST-2: 95 94 96 93 95 -> median 95.0; mean 94.6, squared deviations sum 5.2, /4 = 1.3, sd 1.14
    assert col["SST-2"] == "95.0 ±1.1 [5] (95.1)"
    # MRPC: 88 90 89 (seed 2 failed, seed 4 missing) -> median 89.0, sd 1.0
    assert col["MRPC"] == "89.0 ±1.0 [3, 1 failed] (89.7)"
    assert col["MNLI"] == "– (87.5)"  # not run: missing, with the paper's number
    assert col["Avg"] == "– (87.2)"  # not every task has a value
    assert col["params"] == "0.29M (0.3M)"
    bitfit = next(r for r in t.rows if r[1] == "bitfit")
    assert bitfit[2] == "0.10M (0.1M)" and bitfit[t.header.index("SST-2")] == "93.0 [1] (93.7)"
    paper_only = [r[1] for r in t.rows if r[1].endswith("(paper only)")]
    assert paper_only == [
        "full (paper only)",
        "adapter_drop (paper only)",
        "adapter_drop (paper only)",
    ]
    assert "not run: deberta-v2-xxlarge (full 1500M, lora 4.7M)" in t.notes


def test_table2_avg_and_houlsby_setting():
    recs = [rec("roberta-large", t, LORA, 0, 0.5 + i / 100) for i, t in enumerate(tables.GLUE)]
    recs.append(rec("roberta-large", "rte", LORA, 0, 0.7, exp="table2_houlsby", params=786_432))
    t = tables.table2(results.frame(recs))
    main_row = next(r for r in t.rows if r[1] == LORA)
    # tasks at 50..57 -> mean 53.5; the paper's roberta-large LoRA avg is 89.0
    assert main_row[-1] == "53.5 (89.0)"
    houlsby = next(r for r in t.rows if r[1] == f"{LORA} (houlsby_setup)")
    assert (
        houlsby[t.header.index("RTE")] == "70.0 [1] (85.2)"
    )  # the LoRA† row, not the MNLI-init one


def test_table3_mean_and_scales():
    gen = lambda b, m: {"test": {"BLEU": b, "NIST": 8.8, "METEOR": m, "ROUGE_L": 0.7, "CIDEr": 2.5}}  # noqa: E731
    recs = [rec("gpt2-medium", "e2e", "lora_qv_r4_a32", s, None, gen=gen(b, 0.46), params=393_216)
            for s, b in enumerate([70.0, 71.0, 69.0])]  # fmt: skip
    recs[2]["metrics"]["generation"]["test"]["METEOR"] = 0.47
    t = tables.table3(results.frame(recs))
    row = next(r for r in t.rows if r[1] == "lora_qv_r4_a32")
    col = {h: row[i] for i, h in enumerate(t.header)}
    assert col["BLEU"] == "70.0 ±1.0 [3] (70.4)"  # mean of 70 71 69
    # METEOR ×100: 46 46 47 -> mean 46.33; sd sqrt(((1/3)^2*2 + (2/3)^2)/2) = 0.577
    assert col["METEOR"] == "46.3 ±0.6 [3] (46.8)"
    assert col["params"] == "0.39M (0.35M)"


def test_table5_and_6_analogues():
    arms = [("q", 8, (0.80, 0.82)), ("qv", 4, (0.85, 0.85)), ("qkvo", 2, (0.86, 0.90))]
    recs = [rec("roberta-base", "mnli", f"lora_{w}_r{r}_a8", s, v[s], exp="table5_matrices", targets=w, r=r)
            for w, r, v in arms for s in (0, 1)]  # fmt: skip
    # GPT-2 on E2E: scored by test BLEU, not by its primary metric (the validation loss)
    e2e = rec("gpt2-medium", "e2e", "lora_qv_r4_a32", 0, 1.2, exp="table5_matrices", targets="qv", r=4,
              gen={"test": {"BLEU": 68.5}})  # fmt: skip
    t5 = tables.table5(results.frame([*recs, e2e]))
    assert t5.header == ["weights", "gpt2-medium e2e", "roberta-base MNLI", "GPT-3 WikiSQL (paper)",
                         "GPT-3 MultiNLI (paper)"]  # fmt: skip
    # q@r8: 80 and 82 -> median 81.0, sd 1.41
    assert t5.rows[0] == ["Wq r=8", "–", "81.0 ±1.4 [2]", "70.4", "91.0"]
    assert t5.rows[1] == ["Wk r=8", "–", "–", "70.0", "90.8"]  # not run
    assert ["Wq, Wv r=4", "68.5 [1]", "85.0 ±0.0 [2]", "73.7", "91.3"] in t5.rows
    t6 = tables.table6(results.frame(recs))
    assert t6.header == ["model", "task", "weights", "r=1", "r=2", "r=4", "r=8", "r=64"]
    q = next(r for r in t6.rows if r[:3] == ["roberta-base", "MNLI", "Wq"])
    assert q[3:] == ["–", "–", "–", "81.0 ±1.4 [2]", "–"]
    paper = [
        "GPT-3 175B (paper)",
        "MultiNLI",
        "Wq, Wk, Wv, Wo",
        "91.2",
        "91.7",
        "91.7",
        "91.5",
        "91.4",
    ]
    assert paper in t6.rows


def test_table18_ranks_and_paper():
    gen = {"test": {"BLEU": 70.0, "NIST": 8.8, "METEOR": 0.46, "ROUGE_L": 0.71, "CIDEr": 2.5}}
    recs = [
        rec("gpt2-medium", "e2e", "lora_qv_r4_a32", 0, None, gen=gen, r=4, exp="table18_e2e_rank")
    ]
    recs[0]["metrics"]["best"] = {"validation/loss": 1.2}
    recs.append(
        rec("gpt2-medium", "e2e", "lora_qv_r8_a32", 0, None, "oom", r=8, exp="table18_e2e_rank")
    )
    t = tables.table18(results.frame(recs))
    by_r = {r[1]: r for r in t.rows}
    assert sorted(by_r, key=int) == ["1", "2", "4", "8", "16", "64", "1024"]
    assert by_r["4"][2:4] == ["1.20 [1] (1.18)", "70.00 [1] (70.38)"]
    assert by_r["8"][3] == "– [0, 1 failed] (69.57)"


def test_cost_table():
    recs = [
        rec("roberta-base", "sst2", LORA, s, 0.9, peak_memory_bytes=(s + 1) * 2**30)
        for s in range(3)
    ]
    recs.append(rec("roberta-base", "sst2", LORA, 3, None, "oom"))
    t = tables.cost(results.frame(recs))
    assert t.rows == [["roberta-base", LORA, "294,912", "296,450", "125,000,000", "2.00", "1,000", "1.00",
                       "3, 1 failed"]]  # fmt: skip


def test_markdown_latex_and_cli(tmp_path: Path, table2_records, capsys):
    res = tmp_path / "results"
    res.mkdir()
    (res / "table2_glue.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table2_records))
    code = main(
        ["tables", "table2", "--results-dir", str(res), "--out-dir", str(tmp_path / "tables")]
    )
    assert code == 0
    md = (tmp_path / "tables" / "table2.md").read_text()
    assert "| roberta-base | lora_qv_r8_a8 | 0.29M (0.3M) |" in md
    assert capsys.readouterr().out == md + "\n"
    tex = (tmp_path / "tables" / "table2.tex").read_text()
    assert (
        "lora\\_qv\\_r8\\_a8" in tex and "95.0 $\\pm$1.1 [5] (95.1)" in tex and "\\toprule" in tex
    )
    assert main(["tables", "nope"]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err


def test_tables_and_collect_say_which_environment_made_the_numbers(tmp_path: Path, capsys):
    old, new = ({"torch": "2.13.0+cpu", "transformers": v} for v in ("5.23.0", "5.25.0"))
    recs = [dict(rec("roberta-base", "sst2", LORA, s, 95.0), environment=old) for s in range(3)]
    one = tables.build("table2", experiments=["x"], results_dir=_write(tmp_path, recs))
    assert one.notes[-1] == "environment: torch 2.13.0+cpu, transformers 5.23.0 (all 3 runs)"
    recs.append(dict(rec("roberta-base", "sst2", LORA, 3, 95.0), environment=new))
    mixed = tables.build("table2", experiments=["x"], results_dir=_write(tmp_path, recs))
    assert mixed.notes[-1] == (
        "MIXED environments: torch 2.13.0+cpu, transformers 5.23.0 (3 runs); "
        "torch 2.13.0+cpu, transformers 5.25.0 (1 runs)"
    )
    assert "MIXED environments" in mixed.markdown() and "MIXED environments" in mixed.latex()


def _write(tmp_path: Path, recs: list[dict]) -> Path:
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return tmp_path


def test_lr_sweep_table_marks_each_rows_best_lr():
    recs = []
    # LoRA: 1e-3 best (median of two seeds 0.80, 0.84 = 82.0); BitFit: 3e-3 best; one failed run.
    for tag, lr, seed, v in [(LORA, "0.001", 0, 0.80), (LORA, "0.001", 1, 0.84), (LORA, "0.003", 0, 0.79),
                             ("bitfit", "0.001", 0, 0.70), ("bitfit", "0.003", 0, 0.75)]:  # fmt: skip
        r = rec("minilm", "sst2", tag, seed, v, exp="mini_lr")
        r["run"]["id"] = r["run"]["id"].replace("lr0.0005", f"lr{lr}")
        r["config"]["train"]["lr"] = float(lr)
        r["config_hash"] += lr
        recs.append(r)
    failed = rec("minilm", "sst2", "bitfit", 1, None, "failed", exp="mini_lr")
    failed["run"]["id"] = failed["run"]["id"].replace("lr0.0005", "lr0.003")
    failed["config"]["train"]["lr"] = 0.003
    t = tables.lr_sweep(results.frame([*recs, failed]))
    assert t.header == ["model", "task", "method", "lr=0.001", "lr=0.003"]
    rows = {r[2]: r[3:] for r in t.rows}
    assert rows[LORA] == ["**82.0 ±2.8 [2]**", "79.0 [1]"]
    assert rows["bitfit"] == ["70.0 [1]", "**75.0 [1, 1 failed]**"]


def test_table2_of_a_study_without_the_papers_models_shows_only_its_tasks():
    recs = [rec("minilm", t, LORA, 0, 0.8, exp="mini") for t in ("sst2", "rte")]
    t = tables.table2(results.frame(recs))
    assert t.header == ["model", "method", "params", "SST-2", "RTE", "Avg"]
    assert t.rows == [["minilm", LORA, "0.29M", "80.0 [1]", "80.0 [1]", "80.0"]]


def test_lora_tables_accept_an_experiment_that_mixes_methods(tmp_path: Path, capsys):
    """tables table5 / table6 / table18 / all on a lora,bitfit sweep: LoRA's rows and a note, not a
    TypeError or rows named after BitFit's letters."""
    recs = [rec("roberta-base", "sst2", LORA, s, 0.90 + s / 100, exp="smoke") for s in range(2)]
    recs += [rec("roberta-base", "sst2", "bitfit", s, 0.80, exp="smoke", r=None, targets=None)
             for s in range(2)]  # fmt: skip
    res = _write(tmp_path, recs)
    (res / "smoke.jsonl").write_text((res / "x.jsonl").read_text())
    for name in ("table5", "table6", "table18"):
        table = tables.build(name, res, ["smoke"])
        assert "LoRA runs only; left out: 2 run(s) of bitfit" in table.notes
        assert not any("Wb" in c for row in table.rows for c in row)
    six = tables.build("table6", res, ["smoke"])
    assert any(row[:3] == ["roberta-base", "SST-2", "Wq, Wv"] and row[6].startswith("90.5")
               for row in six.rows), six.rows  # fmt: skip
    assert main(["tables", "all", "--experiments", "smoke", "--results-dir", str(res)]) == 0


def test_baseline_runs_fill_their_paper_rows_as_ours_paper():
    """Issue #17: a run of a baseline sits in its paper row, `ours (paper)`; rows without runs stay
    `paper only`. AdptD is a Pfeiffer adapter on RoBERTa-base (0.3M: bottleneck 16 -> 304,320)."""
    recs = [
        rec("roberta-base", "sst2", "full", s, 0.94 + s / 100, params=124_055_040) for s in (0, 1)
    ]
    recs += [
        rec("roberta-base", "sst2", "adapter_pfeiffer_bottleneck16", 0, 0.93, params=304_320),
        rec("roberta-base", "sst2", "adapter_pfeiffer_bottleneck48", 0, 0.945, params=894_528),
    ]
    for r in recs[2:]:
        r["config"]["method"]["name"] = (
            "adapter_pfeiffer"  # rec() takes it from the tag's first word
        )
    t = tables.table2(results.frame(recs))
    col = t.header.index("SST-2")
    by_name = {r[1]: r for r in t.rows}
    assert by_name["full"][col] == "94.5 ±0.7 [2] (94.8)" and by_name["full"][2] == "124.06M (125M)"
    assert by_name["adapter_pfeiffer_bottleneck16"][col] == "93.0 [1] (94.2)"  # AdptD 0.3M
    assert by_name["adapter_pfeiffer_bottleneck48"][col] == "94.5 [1] (94.7)"  # AdptD 0.9M
    assert [n for n in by_name if n.endswith("(paper only)")] == ["bitfit (paper only)",
                                                                  "lora (paper only)"]  # fmt: skip
    gen = {"test": {"BLEU": 69.0, "NIST": 8.7, "METEOR": 0.46, "ROUGE_L": 0.71, "CIDEr": 2.4}}
    recs3 = [
        rec("gpt2-medium", "e2e", "full_topk_k2", 0, None, gen=gen, params=25_192_448),
        rec("gpt2-medium", "e2e", "adapter_lin_bottleneck6", 0, None, gen=gen, params=368_784),
    ]
    for r, name in zip(recs3, ("full_topk", "adapter_lin"), strict=True):
        r["config"]["method"]["name"] = name
    t3 = tables.table3(results.frame(recs3))
    rows3 = {r[1]: r for r in t3.rows}
    assert rows3["full_topk_k2"][3] == "69.0 [1] (68.1)"  # FTTop2
    assert rows3["adapter_lin_bottleneck6"][3] == "69.0 [1] (66.3)"  # AdapterL 0.37M, not 11.09M
    assert "adapter_lin (paper only)" in rows3 and "full (paper only)" in rows3
