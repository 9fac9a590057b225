"""End to end: synthetic run directories (adapter.safetensors + adapter.json from planted matrices)
through `analyze subspace|spectrum|amplification`, checking the CSV numbers against independent
computations and that every figure file exists and is non-empty."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from safetensors.torch import save_file

from lora_repro.analysis.base_weights import base_weights
from lora_repro.analysis.cli import main
from lora_repro.analysis.outputs import write_figure
from lora_repro.analysis.runs import read_run, read_runs
from lora_repro.cli import main as lora_main
from lora_repro.compose import compose
from lora_repro.methods import lora, prepare
from lora_repro.models import ModelConfig, load_model

PREFIX = "roberta.encoder.layer.{i}.attention.self.{m}.lora.default"
MODULES = {"q": "query", "v": "value"}


def orthonormal(n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64)).Q


def write_run(path: Path, tensors: dict[str, torch.Tensor], meta: dict, **files: dict) -> Path:
    path.mkdir(parents=True)
    save_file(
        {k: v.float().contiguous() for k, v in tensors.items()}, str(path / "adapter.safetensors")
    )
    (path / "adapter.json").write_text(json.dumps(meta))
    for name, doc in files.items():
        text = json.dumps(doc) if name.endswith("json") else yaml.safe_dump(doc)
        (path / name.replace("_", ".")).write_text(text)
    return path


def planted_runs(tmp: Path, k: int = 3, layers: int = 3, n: int = 32) -> tuple[Path, Path]:
    """r=4 and r=8 runs whose A share their top-k right-singular directions at every layer."""
    t1, t2 = {}, {}
    for i in range(layers):
        for j, (letter, m) in enumerate(MODULES.items()):
            Q = orthonormal(n, 4 + 8 - k, 10 * i + j)
            X1, X2 = orthonormal(4, 4, 100 + i), orthonormal(8, 8, 200 + i)
            s1, s2 = (
                torch.linspace(4, 1, 4, dtype=torch.float64),
                torch.linspace(8, 1, 8, dtype=torch.float64),
            )
            A1 = X1 @ torch.diag(s1) @ torch.cat([Q[:, :k], Q[:, k:4]], 1).T
            A2 = X2 @ torch.diag(s2) @ torch.cat([Q[:, :k], Q[:, 4:]], 1).T
            p = PREFIX.format(i=i, m=m)
            t1 |= {f"{p}.A.{letter}": A1, f"{p}.B.{letter}": torch.randn(n, 4, dtype=torch.float64)}
            t2 |= {f"{p}.A.{letter}": A2, f"{p}.B.{letter}": torch.randn(n, 8, dtype=torch.float64)}
    t1["classifier.out_proj.weight"] = torch.randn(2, n)  # the task head: ignored
    meta = {
        "model": {"name": "tiny-roberta", "family": "roberta", "init": "random"},
        "task": "sst2",
    }
    r1 = write_run(tmp / "r4", t1, {**meta, "method": {"name": "lora", "r": 4, "alpha": 8}})
    r2 = write_run(tmp / "r8", t2, {**meta, "method": {"name": "lora", "r": 8, "alpha": 8}})
    return r1, r2


def figures_ok(paths: list[str], stem_parts: list[str]) -> None:
    for part in stem_parts:
        for ext in (".png", ".pdf"):
            hits = [p for p in paths if p.endswith(part + ext)]
            assert hits, f"no {part}{ext} in {paths}"
            assert Path(hits[0]).stat().st_size > 1000


def run_cli(argv: list[str], capsys) -> list[str]:
    assert main(argv) == 0
    return capsys.readouterr().out.split()


def test_subspace_cli_recovers_the_planted_subspace(tmp_path, capsys):
    r1, r2 = planted_runs(tmp_path)
    out = run_cli(["subspace", "--runs", str(r1), str(r2), "--out", str(tmp_path / "o")], capsys)
    csv = [p for p in out if p.endswith(".csv")]
    df = pd.read_csv(csv[0])
    runs = df[df.kind == "runs"]
    assert set(runs.letter) == {"q", "v"} and set(runs.layer) == {0, 1, 2}
    assert len(runs) == 2 * 3 * 4 * 8 and len(df[df.kind == "random"]) == len(runs)
    expected = np.minimum(np.minimum(runs.i, runs.j), 3) / np.minimum(runs.i, runs.j)
    np.testing.assert_allclose(runs.phi, expected, atol=1e-5)
    figures_ok(out, ["r4-vs-r8", "r4-vs-r8_zoom", "r4-vs-r8_by_layer"])


def test_subspace_of_b_and_layer_choice(tmp_path, capsys):
    r1, r2 = planted_runs(tmp_path)
    argv = ["subspace", "--runs", str(r1), str(r2), "--out", str(tmp_path), "--factor", "B"]
    out = run_cli([*argv, "--layers", "0,2", "--name", "b"], capsys)
    df = pd.read_csv(tmp_path / "b.csv")
    assert set(df.factor) == {"B"} and df.phi.between(-1e-9, 1 + 1e-6).all()
    figures_ok(out, ["b", "b_zoom", "b_by_layer"])


def test_spectrum_cli_effective_ranks(tmp_path, capsys):
    """ΔW = (α/r)·B A with planted singular values (3, 2, 1, 0)·(r/α)."""
    U, V = orthonormal(24, 4, 1), orthonormal(20, 4, 2)
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    p = PREFIX.format(i=5, m="query")
    tensors = {f"{p}.A.q": V.T, f"{p}.B.q": U * s}
    run = write_run(
        tmp_path / "run",
        tensors,
        {"method": {"r": 4, "alpha": 2}},  # scale 2/4 = 0.5
        config_yaml={"model": {"name": "minilm"}, "task": {"name": "rte"}, "seed": 3},
    )
    out = run_cli(["spectrum", "--runs", str(run), "--out", str(tmp_path / "o")], capsys)
    ranks = pd.read_csv(next(p for p in out if p.endswith("_ranks.csv")))
    row = ranks.iloc[0]
    assert (row.model, row.task, row.run, row.layer, row.r) == ("minilm", "rte", "r=4 s3", 5, 4)
    assert (row.n90, row.n99) == (2, 3)
    assert row.norm_dW == pytest.approx(0.5 * math.sqrt(14), rel=1e-5)
    sv = pd.read_csv(next(p for p in out if p.endswith("rte.csv")))
    np.testing.assert_allclose(sv.sigma, 0.5 * s.numpy(), atol=1e-6)
    figures_ok(out, ["spectrum_minilm-rte", "spectrum_minilm-rte_ranks"])


def test_rslora_scale_and_runs_found_below_a_directory(tmp_path):
    p = PREFIX.format(i=0, m="value")
    tensors = {f"{p}.A.v": torch.randn(4, 8), f"{p}.B.v": torch.randn(8, 4)}
    write_run(tmp_path / "sweep" / "a" / "s0", tensors, {"method": {"alpha": 8, "rslora": True}})
    write_run(tmp_path / "sweep" / "b" / "s0", tensors, {"method": {"alpha": 8}})
    runs = read_runs([str(tmp_path / "sweep")])
    assert [r.factors["v"].scale for r in runs] == [4.0, 2.0]  # α/√r, α/r (§4.1)
    assert len({r.label for r in runs}) == 2  # same label "r=4" made distinct


def saved_base(tmp_path: Path, name: str) -> tuple[Path, torch.nn.Module]:
    values = OmegaConf.to_container(compose([f"model={name}"]), resolve=True)["model"]
    torch.manual_seed(0)
    model = load_model(ModelConfig(**values))
    model.save_pretrained(tmp_path / name)
    return tmp_path / name, model


def exact_table7(W: np.ndarray, dW: np.ndarray, r: int) -> tuple[float, float, float]:
    U, _, Vh = np.linalg.svd(dW)
    proj = np.linalg.norm(U[:, :r].T @ W @ Vh[:r].T)
    top_w = float(np.sqrt((np.linalg.svd(W, compute_uv=False)[:r] ** 2).sum()))
    return proj, np.linalg.norm(dW) / proj, top_w


def test_amplification_cli_against_the_base_model(tmp_path, capsys):
    base, model = saved_base(tmp_path, "tiny-roberta")
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for i in range(2):
        for letter, m in MODULES.items():
            p = PREFIX.format(i=i, m=m)
            tensors |= {
                f"{p}.A.{letter}": torch.randn(4, 32, generator=g),
                f"{p}.B.{letter}": torch.randn(32, 4, generator=g),
            }
    meta = {
        "model": {"name": "saved", "family": "roberta", "pretrained": str(base)},
        "method": {"r": 4, "alpha": 16},
    }
    run = write_run(tmp_path / "run", tensors, meta)
    # a second run on the same base (r=2): one model load, the very same W tensors
    small = {k: (v[:2] if ".A." in k else v[:, :2]) for k, v in tensors.items()}
    run2 = write_run(tmp_path / "run2", small, {**meta, "method": {"alpha": 16}})
    ws = base_weights(read_runs([str(run), str(run2)]))
    assert ws[0]["q"] is ws[1]["q"] and ws[0]["q"].shape == (2, 32, 32)
    out = run_cli(["amplification", "--runs", str(run), "--out", str(tmp_path / "o")], capsys)
    df = pd.read_csv(next(p for p in out if p.endswith(".csv")))
    assert len(df) == 4
    for row in df.itertuples():
        attn = model.roberta.encoder.layer[row.layer].attention.self
        W = getattr(attn, MODULES[row.letter]).weight.detach().double().numpy()
        p = PREFIX.format(i=row.layer, m=MODULES[row.letter])
        dW = (
            4.0 * (tensors[f"{p}.B.{row.letter}"] @ tensors[f"{p}.A.{row.letter}"]).double().numpy()
        )
        proj, amp, top_w = exact_table7(W, dW, 4)
        assert row.proj_dW_dirs == pytest.approx(proj, rel=1e-4)
        assert row.amplification == pytest.approx(amp, rel=1e-4)
        assert row.proj_W_dirs == pytest.approx(top_w, rel=1e-4)
        assert row.norm_W == pytest.approx(np.linalg.norm(W), rel=1e-5)
        assert 0 < row.proj_random_dirs < row.proj_W_dirs
    md = next(p for p in out if p.endswith(".md"))
    assert "amplification" in Path(md).read_text() and "| r=4 | q | 4 |" in Path(md).read_text()
    figures_ok(out, ["amplification_saved"])


def test_gpt2_fused_slices_from_a_real_lora_injection(tmp_path, capsys):
    """Keys written from lora.apply's own parameter names parse; the q and v slices of the Conv1D
    c_attn (stored in × out) are cut and transposed to match ΔW."""
    base, _ = saved_base(tmp_path, "tiny-gpt2")
    values = OmegaConf.to_container(compose(["model=tiny-gpt2"]), resolve=True)["model"]
    torch.manual_seed(0)
    model = load_model(ModelConfig(**values))
    cfg = lora.Config(targets="qv", r=2, alpha=4)
    prepare(model, cfg, "gpt2")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora." in name:
                param.normal_()
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert any(not n.count(".lora.") for n in trainable)  # the head is there and must be ignored
    meta = {
        "model": {"name": "g", "family": "gpt2", "pretrained": str(base)},
        "method": {"alpha": 4},
    }
    run = write_run(tmp_path / "run", trainable, meta)
    parsed = read_run(run)
    assert set(parsed.factors) == {"q", "v"} and parsed.factors["q"].layers == [0, 1]
    run_cli(["amplification", "--runs", str(run), "--out", str(tmp_path), "--name", "t"], capsys)
    df = pd.read_csv(tmp_path / "t.csv")
    ref = load_model(ModelConfig(name="g", family="gpt2", pretrained=str(base)))
    n = ref.config.n_embd
    for row in df.itertuples():
        c_attn = ref.transformer.h[row.layer].attn.c_attn.weight.detach().double().numpy()
        start = {"q": 0, "v": 2 * n}[row.letter]
        W = c_attn[:, start : start + n].T
        assert row.norm_W == pytest.approx(np.linalg.norm(W), rel=1e-5)
        _, _, top_w = exact_table7(W, W, 2)
        assert row.proj_W_dirs == pytest.approx(top_w, rel=1e-4)


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    r1, _ = planted_runs(tmp_path)
    assert main(["subspace", "--runs", str(r1), "--out", str(tmp_path)]) == 2
    assert "exactly 2 runs" in capsys.readouterr().err
    assert main(["spectrum", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "no run directory matches" in capsys.readouterr().err
    # tiny-roberta is randomly initialised: its W cannot be rebuilt, so say so instead of guessing
    assert main(["amplification", "--runs", str(r1), "--out", str(tmp_path)]) == 2
    assert "init=random" in capsys.readouterr().err
    assert main(["spectrum", "--runs", str(r1), "--letters", "k", "--out", str(tmp_path)]) == 2
    assert "letter 'k'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))  # nothing half-written


def test_lora_repro_cli_dispatches_analyze(tmp_path, capsys):
    r1, _ = planted_runs(tmp_path)
    assert lora_main(["analyze", "spectrum", "--runs", str(r1), "--out", str(tmp_path / "o")]) == 0
    assert any(p.endswith("_ranks.png") for p in capsys.readouterr().out.split())


def test_curves_plot_each_runs_primary_metric_by_epoch(tmp_path, capsys):
    for name, values in (("a", [0.5, 0.7, 0.72]), ("b", [0.6, 0.65, 0.66])):
        run = tmp_path / name
        run.mkdir()
        rows = [{"event": "train", "step": 1, "loss": 1.0}]
        rows += [{"event": "eval", "step": 10 * e, "epoch": float(e), "dev/accuracy": v}
                 for e, v in enumerate(values, 1)]  # fmt: skip
        (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run / "result.json").write_text(
            json.dumps({"metrics": {"primary_metric": "dev/accuracy"}})
        )
    out = run_cli(["curves", "--runs", str(tmp_path / "*"), "--out", str(tmp_path / "o"),
                   "--labels", "A", "B"], capsys)  # fmt: skip
    assert {Path(p).suffix for p in out} == {".csv", ".png", ".pdf"}
    df = pd.read_csv(tmp_path / "o" / "curves.csv")
    assert list(df[df["label"] == "A"]["value"]) == [0.5, 0.7, 0.72]
    assert set(df["metric"]) == {"dev/accuracy"} and list(df["epoch"][:3]) == [1.0, 2.0, 3.0]
    assert main(["curves", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    # the same curves from the records alone (their run folders need not exist here)
    recs = [{"run": {"folder": f"/elsewhere/runs/x/sst2/full/{n}_bs8/s0"},
             "metrics": {"primary_metric": "dev/accuracy",
                         "curve": [{"epoch": 1.0, "step": 10, "dev/accuracy": v}]}}
            for n, v in (("a", 0.5), ("b", 0.6), ("c", 0.7))]  # fmt: skip
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run_cli(["curves", "--records", str(results), "--runs", "runs/x/sst2/*/[ab]_*/s0",
             "--out", str(tmp_path / "p")], capsys)  # fmt: skip
    df = pd.read_csv(tmp_path / "p" / "curves.csv")
    assert list(df["value"]) == [0.5, 0.6] and list(df["label"]) == ["sst2 a s0", "sst2 b s0"]
    assert (
        main(["curves", "--records", str(results), "--runs", "runs/y/*", "--out", str(tmp_path)])
        == 2
    )


def test_a_figure_rebuilt_from_the_same_numbers_is_the_same_bytes(tmp_path, monkeypatch):
    # committed figures are regenerated every session: only a change of content should show in git
    def draw(stem: Path) -> dict[str, bytes]:
        fig = Figure()
        fig.add_subplot().plot([0, 1, 2], [3, 1, 2])
        return {p.suffix: p.read_bytes() for p in write_figure(fig, stem)}

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # matplotlib's clock for the PDF date
    first = draw(tmp_path / "a" / "fig")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")  # rebuilt years later
    again = draw(tmp_path / "b" / "fig")
    assert set(first) == {".png", ".pdf"}
    assert first == again
