"""Every experiment preset composes, expands to the number of runs it promises, and its runs carry the
paper's settings (spot checks of single jobs; composing all ~350 jobs would take too long here)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lora_repro import identity, sweep
from lora_repro.compose import CONF_DIR
from lora_repro.config import RunConfig

# preset -> runs it expands to (the README's index quotes these)
EXPECTED = {
    "demo": 1,
    "smoke": 1,
    "mini": 6 * 5 * 3,  # methods x tasks x seeds
    "mini_lr": 6 * 6,  # methods x learning rates (SST-2, seed 0)
    "mini_rank": 2 * 5 * 3,  # tasks x ranks x seeds
    "mini_matrices": 3 * 2 * 3,  # arms x tasks x seeds
    "mini_conv_bf16": 2,  # fp32, bf16 (full fine-tuning; LoRA by CLI)
    "e2e_smollm2": 3,  # seeds (LoRA; the other methods by CLI)
    "mini_conv_lr": 5 * 3,  # tasks x full fine-tuning's learning rates (seed 0; other grids by CLI)
    "mini_conv": 5 * 6 * 3,  # tasks x methods x seeds
    # tasks x (BitFit, AdptH, AdptP x 2 lrs + PreLayer x 2), + 2 edge runs (PreLayer CoLA, BitFit RTE)
    "mini_conv_sweep": 5 * (3 * 2 + 2) + 2,
    "mini_conv_rank": 2 * 5 * 2,  # tasks x ranks x seeds
    "mini_conv_matrices": 2 * 3 * 2,  # tasks x arms x seeds
    # rows x tasks x seeds: RoBERTa-base LoRA, FT, BitFit, AdptD x 2; RoBERTa-large and DeBERTa FT, LoRA
    "table2_glue": (5 + 2 + 2) * 8 * 5,
    "table2_houlsby": 5 * 8 * 5,  # LoRA†, AdptP† x 2, AdptH† x 2
    "table3_e2e": (7 + 5) * 3,  # GPT-2 medium's 7 rows, large's 5, x seeds
    "table5_matrices": 2 * 7 * 3,  # (model, task) x arms x seeds
    "table6_rank": 2 * 3 * 5 * 3,  # (model, task) x targets x ranks x seeds
    "table18_e2e_rank": 7 * 3,
    "subspace": 3 * 2,  # r in 4, 8, 64 x 2 seeds
}
NEEDS_NLG = {"table3_e2e", "table5_matrices", "table6_rank", "table18_e2e_rank", "subspace"}


def _skip_without_nlg(name: str) -> None:
    if name in NEEDS_NLG and not (CONF_DIR / "task" / "e2e.yaml").exists():
        pytest.skip("needs conf/task/e2e.yaml (the NLG tasks' branch)")


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    """One Hydra initialisation for the module: composing is then ~10x cheaper per call."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        yield


def jobs(name: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The sweep's jobs as the skip_done sweeper expands them (Hydra's basic-sweeper grid)."""
    cfg = compose("config", [f"experiment={name}", *extra], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("SkipDoneSweeper"), "sweeps use skip_done"
    grids = sweep.expand(cfg.hydra.sweeper, [f"experiment={name}", *extra])
    return [j for grid, _ in grids for j in grid]


def load(overrides: list[str]) -> RunConfig:
    cfg = compose("config", list(overrides))
    return RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))


def test_every_preset_is_counted():
    assert {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_expands_to_its_run_count(name: str):
    _skip_without_nlg(name)
    expanded = jobs(name)
    assert len(expanded) == EXPECTED[name]
    assert len({tuple(j) for j in expanded}) == len(expanded)
    first, last = (
        load(expanded[0]),
        load(expanded[-1]),
    )  # both ends of the grid compose and type-check
    assert first.experiment == last.experiment == name
    assert len(expanded) == 1 or identity.run_id(first) != identity.run_id(last)


def test_table2_runs_carry_the_paper_settings(tmp_path: Path):
    cfg = load(["experiment=table2_glue", "recipe=roberta-large/rte",
                "method_recipe=roberta-large/lora", "seed=4"])  # fmt: skip
    # Table 9, RoBERTa-large RTE: batch 8 per GPU x 8 GPUs, 20 epochs, lr 4e-4, length 512, α = 16
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr) == (64, 20, 4e-4)
    assert (cfg.task.max_length, cfg.method.r, cfg.method.alpha) == (512, 8, 16)
    # MNLI init: the RTE run waits for, then starts from, the same model and seed's MNLI adapter
    pair = [["experiment=table2_glue", f"runs_dir={tmp_path}", f"recipe=roberta-base/{t}",
             "method_recipe=roberta-base/lora", "seed=1"] for t in ("mnli", "rte")]  # fmt: skip
    mnli, rte = sweep.plan(pair, load, {"rte": "mnli"})
    assert (mnli.state, rte.state) == ("todo", "waiting")
    assert rte.overrides[-1] == f"++train.init_from='{mnli.folder / 'adapter.safetensors'}'"
    assert load(rte.overrides).train.init_from == str(mnli.folder / "adapter.safetensors")
    houlsby = load(["experiment=table2_houlsby", "recipe=roberta-large/mrpc",
                    "method_recipe=roberta-large/lora"])  # fmt: skip
    assert (houlsby.model.name, houlsby.task.max_length, houlsby.train.init_from) == (
        "roberta-large",
        128,
        None,
    )


def test_mini_reads_glue_dir(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/somewhere/glue")
    cfg = load([*jobs("mini")[4]])
    assert (cfg.model.name, cfg.model.init, cfg.task.train_limit) == ("minilm", "pretrained", 1000)
    assert cfg.task.data_dir == f"/somewhere/glue/{ {'sst2': 'SST-2', 'mrpc': 'MRPC', 'cola': 'CoLA', 'rte': 'RTE', 'stsb': 'STS-B'}[cfg.task.name] }"  # fmt: skip


def test_mini_recipes_set_method_and_its_own_lr_at_loras_budget():
    """Each mini recipe picks its method and learning rate; the small methods sit within 7% of LoRA's
    |Θ| (r=8 on Wq, Wv: 73,728 on MiniLM-L6), as the paper's low-budget adapter rows do (Table 2)."""
    from lora_repro.methods import count_params, prepare
    from lora_repro.models import load_model

    def count(cfg: RunConfig) -> int:
        model = load_model(cfg.model, "classification", 2, device="meta")
        prepare(model, cfg.method, cfg.model.family)
        return count_params(model, cfg.model.family)["method_params"]

    recipes = {
        next(o for o in j if o.startswith("mini="))[5:]: load(j)
        for j in jobs("mini", ("task=sst2", "seed=0"))
    }
    assert set(recipes) == {
        "lora",
        "full",
        "bitfit",
        "adapter_houlsby",
        "adapter_pfeiffer",
        "prefix_layer",
    }
    assert len({c.train.lr for c in recipes.values()}) > 1, "each method has its own lr"
    lora = recipes["lora"].method
    assert (lora.targets, lora.r, lora.alpha) == ("qv", 8, 8)
    budget = count(recipes["lora"])
    assert budget == 73_728
    for name in ("adapter_houlsby", "adapter_pfeiffer", "prefix_layer"):
        n = count(recipes[name])
        assert abs(n / budget - 1) < 0.07, (name, n)
    lr_runs = [load(j) for j in jobs("mini_lr")]
    assert {c.task.name for c in lr_runs} == {"sst2"} and len({c.train.lr for c in lr_runs}) == 6


def test_mini_rank_and_matrices_vary_only_the_lora_shape():
    ranks = [load(j).method for j in jobs("mini_rank", ("task=sst2", "seed=0"))]
    assert [(m.name, m.targets, m.r, m.alpha) for m in ranks] == [
        ("lora", "qv", r, 8) for r in (1, 2, 4, 8, 64)
    ]
    arms = [load(j).method for j in jobs("mini_matrices", ("task=sst2", "seed=0"))]
    assert [(m.targets, m.r) for m in arms] == [("q", 8), ("qv", 4), ("qkvo", 2)]


def test_table5_arms_are_zipped_at_a_fixed_budget():
    _skip_without_nlg("table5_matrices")
    roberta = [
        load(j).method
        for j in jobs("table5_matrices", ("seed=0", "hydra.sweeper.only=[roberta-base]"))
    ]
    # every arm adapts r x |W| = 8 rank-units; α stays at the first r tried (8 for RoBERTa)
    assert sorted((m.targets, m.r) for m in roberta) == [
        ("k", 8), ("o", 8), ("q", 8), ("qk", 4), ("qkvo", 2), ("qv", 4), ("v", 8)
    ]  # fmt: skip
    assert {m.alpha for m in roberta} == {8}
    gpt2 = load(["experiment=table5_matrices", "recipe=gpt2-medium/e2e", "method_recipe=gpt2/lora",
                 "arm=qkvo_r2"]).method  # fmt: skip
    assert (gpt2.targets, gpt2.r, gpt2.alpha) == ("qkvo", 2, 32)  # the arm wins over Table 11's r=4


def test_table6_is_a_full_grid():
    _skip_without_nlg("table6_rank")
    grid = jobs("table6_rank", ("seed=0", "hydra.sweeper.only=[roberta-base]"))
    combos = {tuple(o.split("=")[1] for o in j if o.startswith("method.")) for j in grid}
    assert combos == {
        (t, str(r)) for t, r in itertools.product(["q", "qv", "qkvo"], [1, 2, 4, 8, 64])
    }
    m = load(grid[-1]).method
    assert (m.targets, m.r, m.alpha) == ("qkvo", 64, 8)


def test_experiments_readme_quotes_each_presets_run_count():
    """experiments/README.md's index: the `runs` column is what the dry-run plan expands to."""
    text = (CONF_DIR.parent / "experiments" / "README.md").read_text()
    quoted = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[1].startswith("`") and cells[2].isdigit():
            quoted[cells[1].strip("`")] = int(cells[2])
    assert quoted and all(EXPECTED[name] == n for name, n in quoted.items()), quoted


def test_mini_conv_reuses_the_sweeps_seed_0_runs_and_doubles_peft_epochs(tmp_path: Path):
    """The main table's full fine-tuning at seed 0 is mini_conv_lr's committed run at each task's best
    lr, and each swept method's seed 0 is mini_conv_sweep's run at its chosen lr (same config but for
    the experiment), so they are adopted, not retrained; LoRA (swept at FT's epochs) trains 2x them."""
    name = "mini_conv"
    cfg = compose("config", [f"experiment={name}"], return_hydra_config=True)
    expanded = sweep.expand(cfg.hydra.sweeper, [f"experiment={name}", f"runs_dir={tmp_path}"])
    results = Path(__file__).parents[1] / "results"
    planned = sweep.plan_all(expanded, load, list(cfg.hydra.sweeper.reuse), results)
    by_id = {p.run_id: p for p in planned}

    # runs another experiment made (directly, or through the main table's own collected copy of one)
    def origin(p: sweep.Planned) -> str:
        run = p.source["run"]  # type: ignore[index]
        return run.get("reused_from") or run["folder"]

    reused = sorted(
        i for i, p in by_id.items() if p.state == "reuse" and "/mini_conv/" not in origin(p)
    )
    assert reused == sorted(i for i in by_id if "/lora_" not in i and i.endswith("/s0"))
    lrs = {
        i.split("/")[2]: by_id[i].source["config"]["train"]["lr"] for i in reused if "/full/" in i
    }
    assert lrs == {"sst2": 1e-4, "mrpc": 1e-4, "stsb": 1e-4, "cola": 1e-4, "rte": 3e-5}  # per task
    ft, lora = (
        load([f"experiment={name}", "recipe=minilm/rte", f"mini_conv={m}"])
        for m in ("full", "lora")
    )
    assert (ft.train.epochs, lora.train.epochs, lora.train.lr) == (8, 16, 3e-3)
    cola = load([f"experiment={name}", "recipe=minilm/cola", "mini_conv=bitfit"])
    assert (cola.train.epochs, cola.train.lr) == (10, 1e-3)  # BitFit's sweep chose per task


def test_mini_conv_arms_are_the_main_tables_lora_but_for_the_shape():
    """Rank arm's r = 8 is the main table's LoRA run; the matrix arm's Wq, Wv r = 4 is the rank arm's
    r = 4 run (same config but for the experiment: `hydra.sweeper.reuse` adopts them)."""
    base = ["recipe=minilm/mrpc", "mini_conv=lora", "seed=1"]
    main = load(["experiment=mini_conv", *base])
    r8 = load(["experiment=mini_conv_rank", *base, "method.r=8"])
    r4 = load(["experiment=mini_conv_rank", *base, "method.r=4"])
    arm = load(["experiment=mini_conv_matrices", *base, "arm=qv_r4"])

    def same(a: RunConfig, b: RunConfig) -> bool:
        return identity.config_hash(a) == identity.config_hash(replace(b, experiment=a.experiment))

    assert same(main, r8) and same(r4, arm) and not same(main, r4)
    q8 = load(["experiment=mini_conv_matrices", *base, "arm=q_r8"])
    assert (q8.method.targets, q8.method.r, q8.method.alpha, q8.train.epochs) == ("q", 8, 8, 10)
