"""One report per analysis of §7: read the runs, compute, write CSV (every number), figures
(PNG + PDF) and, for Table 7, Markdown. Each returns the paths it wrote."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from lora_repro.analysis import plots
from lora_repro.analysis.amplification import table7, top_directions
from lora_repro.analysis.outputs import markdown_table, slug, write_csv, write_figure, write_text
from lora_repro.analysis.runs import Run, read_runs
from lora_repro.analysis.spectrum import delta_svd, energy_rank, entropy_rank
from lora_repro.analysis.subspace import phi, random_phi
from lora_repro.errors import ConfigError

LINES, MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D")
RANK_MEASURES = {
    "n90": "directions holding 90% of ‖ΔW‖²",
    "n99": "directions holding 99% of ‖ΔW‖²",
    "entropy_rank": "entropy effective rank",
}


def _describe(runs: list[Run]) -> str:
    names = list(dict.fromkeys(r.describe() for r in runs))
    return " | ".join(names)


def _stem(args: argparse.Namespace, kind: str, runs: list[Run], extra: str = "") -> Path:
    if args.name:
        return Path(args.out) / args.name
    models = dict.fromkeys(slug(f"{r.model or ''}-{r.task or ''}") for r in runs)
    return Path(args.out) / "_".join([kind, *models, *([extra] if extra else [])])


def _letters(runs: list[Run], wanted: list[str] | None) -> list[str]:
    common = [k for k in runs[0].factors if all(k in r.factors for r in runs[1:])]
    if wanted:
        for k in wanted:
            if k not in common:
                raise ConfigError(
                    f"letter {k!r} not adapted in every run; valid: {', '.join(common)}"
                )
        return wanted
    if not common:
        raise ConfigError("the runs share no adapted matrix letter")
    return common


def _grid_frame(values: np.ndarray, layers: list[int], **cols: object) -> pd.DataFrame:
    """Long format for a (L, ri, rj) array: one row per layer, i, j (1-based)."""
    _, ri, rj = values.shape
    lay, i, j = np.meshgrid(
        np.asarray(layers), np.arange(1, ri + 1), np.arange(1, rj + 1), indexing="ij"
    )
    frame = {"layer": lay.ravel(), "i": i.ravel(), "j": j.ravel(), "phi": values.ravel()}
    return pd.DataFrame({**cols, **frame})


def _plot_layers(layers: list[int], wanted: str | None) -> list[int]:
    if wanted == "all":
        return layers
    if wanted:
        try:
            chosen = [int(x) for x in wanted.split(",")]
        except ValueError:
            raise ConfigError(f"--layers {wanted!r}: give 'all' or indices like 0,5,11") from None
        bad = [x for x in chosen if x not in layers]
        if bad:
            raise ConfigError(f"layers {bad} not adapted; valid: {layers}")
        return chosen
    picks = np.linspace(0, len(layers) - 1, min(4, len(layers))).round().astype(int)
    return [layers[p] for p in dict.fromkeys(picks.tolist())]


def subspace(args: argparse.Namespace) -> list[Path]:
    """φ(A1, A2, i, j) of two runs for every shared layer and matrix, plus a random baseline."""
    runs = read_runs(args.runs, args.adapter, args.labels)
    if len(runs) != 2:
        raise ConfigError(
            f"subspace compares exactly 2 runs, got {len(runs)}: {[str(r.path) for r in runs]}"
        )
    one, two = runs
    frames, phis, rands, layer_sets = [], {}, {}, {}
    for n, letter in enumerate(_letters(runs, args.letters)):
        f1, f2 = one.factors[letter], two.factors[letter]
        layers = sorted(set(f1.layers) & set(f2.layers))
        M1 = getattr(f1, args.factor)[[f1.layers.index(x) for x in layers]]
        M2 = getattr(f2, args.factor)[[f2.layers.index(x) for x in layers]]
        phis[letter] = phi(M1, M2, args.factor).numpy()
        rands[letter] = random_phi(
            tuple(M1.shape), tuple(M2.shape), args.factor, args.seed + n
        ).numpy()
        layer_sets[letter] = layers
        base = {"run1": one.label, "run2": two.label, "factor": args.factor, "letter": letter}
        frames.append(_grid_frame(phis[letter], layers, **base, kind="runs"))
        frames.append(_grid_frame(rands[letter], layers, **base, kind="random"))
    stem = _stem(
        args,
        "subspace",
        runs,
        slug(f"{one.label}_vs_{two.label}") + ("_B" if args.factor == "B" else ""),
    )
    written = [write_csv(pd.concat(frames, ignore_index=True), stem.with_suffix(".csv"))]

    side = "right" if args.factor == "A" else "left"
    letters = list(phis)
    layers = layer_sets[letters[0]]
    title = (
        f"{_describe(runs)}: subspace similarity φ({args.factor}₁, {args.factor}₂, i, j) of "
        f"{side}-singular vectors; {args.factor}₁ = {one.label}, {args.factor}₂ = {two.label}"
    )
    grid = []
    for layer in _plot_layers(layers, args.layers):
        row = [
            plots.Heatmap(phis[k][layer_sets[k].index(layer)], f"layer {layer}, {plots.matrix(k)}")
            for k in letters
            if layer in layer_sets[k]
        ]
        k0 = letters[0]
        row.append(
            plots.Heatmap(rands[k0][layer_sets[k0].index(layer)], f"layer {layer}, random Gaussian")
        )
        grid.append(row)
    ylabel, xlabel = f"i ({one.label})", f"j ({two.label})"
    written += write_figure(plots.phi_heatmaps(grid, title, ylabel, xlabel), stem)
    ri, rj = phis[letters[0]].shape[1:]
    m = min(ri, rj)
    if max(ri, rj) >= 2 * m:  # Fig. 3's zoom on the first min(r1, r2) directions of both
        fig = plots.phi_heatmaps(grid, title + f" (i, j ≤ {m})", ylabel, xlabel, max_i=m, max_j=m)
        written += write_figure(fig, stem.with_name(stem.name + "_zoom"))
    curves = {}
    for k in letters:
        p, q = phis[k], rands[k]
        ki, kj = p.shape[1:]
        mk = min(ki, kj)
        c = {"φ(1,1)": p[:, 0, 0], f"φ({mk},{mk})": p[:, mk - 1, mk - 1]}
        if ki != kj:  # how much of the smaller subspace lies inside the whole larger one
            c[f"φ({ki},{kj})"] = p[:, -1, -1]
        c["random φ(1,1)"] = q[:, 0, 0]
        c[f"random φ({mk},{mk})"] = q[:, mk - 1, mk - 1]
        if ki != kj:
            c[f"random φ({ki},{kj})"] = q[:, -1, -1]
        curves[k] = c
    fig = plots.phi_by_layer(layer_sets, curves, title)
    written += write_figure(fig, stem.with_name(stem.name + "_by_layer"))
    return written


def spectrum(args: argparse.Namespace) -> list[Path]:
    """Singular values of ΔW = s·B A per layer and matrix, and effective ranks."""
    runs = read_runs(args.runs, args.adapter, args.labels)
    letters = _letters(runs, args.letters)
    sv_frames, rank_frames, panels, styles = [], [], [], {}
    series: dict[str, dict] = {k: {} for k in RANK_MEASURES}
    for run in runs:
        row = []
        for letter in letters:
            f = run.factors[letter]
            _, S, _ = delta_svd(f.B, f.A, f.delta_scale())
            cum = (
                S.square().cumsum(-1) / S.square().sum(-1, keepdim=True).clamp_min(1e-300)
            ).numpy()
            L, r = S.shape
            ident = {
                "run": run.label,
                "model": run.model,
                "task": run.task,
                "letter": letter,
                "r": r,
            }
            sv_frames.append(
                pd.DataFrame(
                    {
                        **ident,
                        "layer": np.repeat(f.layers, r),
                        "index": np.tile(np.arange(1, r + 1), L),
                        "sigma": S.numpy().ravel(),
                        "energy_cum": cum.ravel(),
                    }
                )
            )
            ranks = {
                "n90": energy_rank(S, 0.9).numpy(),
                "n99": energy_rank(S, 0.99).numpy(),
                "entropy_rank": entropy_rank(S).numpy(),
            }
            rank_frames.append(
                pd.DataFrame(
                    {
                        **ident,
                        "layer": f.layers,
                        "norm_dW": S.square().sum(-1).sqrt().numpy(),
                        "sigma1": S[:, 0].numpy(),
                        **ranks,
                    }
                )
            )
            label = f"{run.label} {plots.matrix(letter)}"
            for name, ys in ranks.items():
                series[name][label] = (f.layers, ys)
            # colour = run, line style and marker = matrix: coinciding lines stay distinguishable
            n, m = len(panels), len(row)
            styles[label] = {"color": f"C{n % 10}", "ls": LINES[m % 4], "marker": MARKERS[m % 4]}
            row.append((letter, f.layers, S.numpy()))
        panels.append(row)
    stem = _stem(args, "spectrum", runs)
    written = [
        write_csv(pd.concat(sv_frames, ignore_index=True), stem.with_suffix(".csv")),
        write_csv(
            pd.concat(rank_frames, ignore_index=True), stem.with_name(stem.name + "_ranks.csv")
        ),
    ]
    title = f"{_describe(runs)}: singular values of ΔW = s·B A (s = α/r, or α/√r with rsLoRA)"
    written += write_figure(plots.spectra(panels, [r.label for r in runs], title), stem)
    title = f"{_describe(runs)}: effective rank of ΔW by layer"
    fig = plots.by_layer(
        {RANK_MEASURES[k]: v for k, v in series.items()},
        {v: "directions" for v in RANK_MEASURES.values()},
        title,
        styles=styles,
    )
    written += write_figure(fig, stem.with_name(stem.name + "_ranks"))
    return written


def amplification(args: argparse.Namespace) -> list[Path]:
    """Table 7: ‖Uᵀ W Vᵀ‖_F for U, V from ΔW, W and random; ‖ΔW‖_F; the amplification factor."""
    from lora_repro.analysis.base_weights import base_weights

    runs = read_runs(args.runs, args.adapter, args.labels)
    letters = _letters(runs, args.letters)
    weights = base_weights(runs, args.model)
    need: dict[int, tuple] = {}  # W shared by runs of one base model: its top directions once
    for ws, run in zip(weights, runs, strict=True):
        for k in letters:
            prev = need.get(id(ws[k]), (ws[k], 0))
            need[id(ws[k])] = (ws[k], max(prev[1], run.factors[k].r))
    dirs = {
        i: top_directions(W, r, exact=args.exact, seed=args.seed)[::2] for i, (W, r) in need.items()
    }
    frames, series = [], {}
    for ws, run in zip(weights, runs, strict=True):
        for k in letters:
            f = run.factors[k]
            dU, dS, dVh = delta_svd(f.B, f.A, f.delta_scale())
            cols = table7(ws[k], dU, dS, dVh, dirs[id(ws[k])], seed=args.seed)
            frames.append(
                pd.DataFrame(
                    {
                        "run": run.label,
                        "model": run.model,
                        "task": run.task,
                        "letter": k,
                        "layer": f.layers,
                        "r": f.r,
                        **{c: v.numpy() for c, v in cols.items()},
                    }
                )
            )
            series.setdefault(f"amplification of {plots.matrix(k)}", {})[run.label] = (
                f.layers,
                cols["amplification"].numpy(),
            )
    df = pd.concat(frames, ignore_index=True)
    stem = _stem(args, "amplification", runs)
    written = [write_csv(df, stem.with_suffix(".csv"))]
    summary = df.groupby(["run", "letter", "r"], sort=False).median(numeric_only=True).reset_index()
    summary = summary.drop(columns=["layer"])
    md = (
        f"# Table 7 (§7.3): ‖Uᵀ W Vᵀ‖_F — {_describe(runs)}\n\n"
        "U, V: top-r singular directions of ΔW, of W, or random; amplification = "
        "‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F with U, V from ΔW.\n\n## Median over layers\n\n"
        + markdown_table(summary)
        + "\n## Every layer\n\n"
        + markdown_table(df.drop(columns=["model", "task"]))
    )
    written.append(write_text(md, stem.with_suffix(".md")))
    print(markdown_table(summary))
    title = f"{_describe(runs)}: amplification ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F (U, V from ΔW) by layer"
    fig = plots.by_layer(series, {s: "amplification factor" for s in series}, title, log_y=True)
    written += write_figure(fig, stem)
    return written
