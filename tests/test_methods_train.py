"""Every method trains through the same `lora-repro train` as LoRA (issue 4: same trainer, data and
record, for the roberta, deberta-v2, gpt2 and bert families): a success record, an adapter holding
exactly that method's trainable tensors plus the task head, readable by `lora-repro adapter info`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lora_repro.cli import main
from lora_repro.methods import METHODS, method_config, prepare
from lora_repro.models import FAMILIES, ModelConfig, is_head, load_model

SST2 = Path(__file__).parent / "fixtures" / "glue" / "SST-2"
CONF = Path(__file__).parent.parent / "conf"

# Every method once and every family at least once (the Llama family has no biases for BitFit).
CASES = {
    "full": "roberta",
    "full_topk": "llama",
    "bitfit": "deberta-v2",
    "lora": "gpt2",
    "adapter_houlsby": "deberta-v2",
    "adapter_pfeiffer": "gpt2",
    "adapter_lin": "bert",
    "prefix_layer": "llama",
    "prefix_embed": "gpt2",
}

# What each method may train, by parameter name (besides the task head); written from the methods'
# definitions, not from the code that saves them.
OWN = {
    "full": lambda n, fam: True,
    "full_topk": lambda n, fam: (
        re.search(rf"{re.escape(FAMILIES[fam].blocks)}\.1\.", n) is not None
    ),
    "bitfit": lambda n, fam: n.endswith(".bias"),
    "lora": lambda n, fam: ".lora.default." in n,
    "adapter_houlsby": lambda n, fam: ".adapter." in n,
    "adapter_pfeiffer": lambda n, fam: ".adapter." in n,
    "adapter_lin": lambda n, fam: ".adapter." in n,
    "prefix_layer": lambda n, fam: n.startswith("prefix_tuning."),
    "prefix_embed": lambda n, fam: n.startswith("prefix_tuning."),
}
# Overrides that make a case discriminating: k=1 trains the top block of the tiny models' two.
EXTRA = {"full_topk": {"k": 1}}


def test_cases_cover_every_method_and_family():
    assert set(CASES) == set(METHODS) == set(OWN)
    assert set(CASES.values()) == set(FAMILIES)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_trains_through_the_cli_and_saves_only_its_tensors(
    method, tmp_path, capsys, one_thread
):
    family = CASES[method]
    model_name = f"tiny-{family}"
    args = [
        "train", "experiment=smoke", f"model={model_name}", f"method={method}",
        f"task.data_dir={SST2}", "task.train_limit=16", "task.eval_limit=8",
        "train.max_steps=2", "train.eval_every=null", f"runs_dir={tmp_path}",
        *(f"method.{k}={v}" for k, v in EXTRA.get(method, {}).items()),
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    (result,) = tmp_path.glob(f"smoke/{model_name}/sst2/{method}*/*/s0/result.json")
    rec = json.loads(result.read_text())
    assert rec["status"] == "success" and rec["config"]["method"]["name"] == method
    assert 0.0 <= rec["metrics"]["primary"] <= 1.0 and rec["metrics"]["best_step"] == 2

    # the adapter: exactly the trainable tensors of a freshly prepared model, each the method's own
    # or the head's, with the record's parameter count
    folder = result.parent
    saved = load_file(str(folder / "adapter.safetensors"))
    cfg = ModelConfig(**yaml.safe_load((CONF / "model" / f"{model_name}.yaml").read_text()))
    fresh = load_model(cfg, "classification", 2)
    values = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())
    prepare(fresh, method_config({**values, **EXTRA.get(method, {})}), family)
    expected = {n: tuple(p.shape) for n, p in fresh.named_parameters() if p.requires_grad}
    assert {n: tuple(t.shape) for n, t in saved.items()} == expected
    heads = {n for n in saved if is_head(fresh, family, n)}
    assert heads and {n for n in saved if n not in heads and not OWN[method](n, family)} == set()
    assert len(saved) > len(heads)  # the method trained something besides the head
    assert sum(t.numel() for t in saved.values()) == rec["cost"]["trainable_params"]
    if method != "full":
        assert rec["cost"]["trainable_params"] < rec["cost"]["total_params"]

    capsys.readouterr()
    assert main(["adapter", "info", str(folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"]["name"] == method and info["base"]["name"] == model_name
    assert (info["task"], info["num_labels"], info["tensors"]) == ("sst2", 2, len(saved))
    assert info["params"] == rec["cost"]["trainable_params"]
    assert info["bytes"] == rec["cost"]["adapter_bytes"] > 0
