"""`lora-repro adapter {info,merge,export-peft,combine}` end to end on a tiny saved base model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from lora_repro.cli import main
from lora_repro.methods import method_config, prepare
from lora_repro.models import ModelConfig, load_model
from lora_repro.weights.files import WEIGHTS
from lora_repro.weights.state import load_adapter, save_adapter

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny RoBERTa saved as a plain model directory: the 'pretrained' base the adapters refer to."""
    cfg = ModelConfig(**yaml.safe_load((CONF / "tiny-roberta.yaml").read_text()))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base")
    load_model(cfg).save_pretrained(path)
    return path


def base_cfg(base_dir) -> ModelConfig:
    cfg = ModelConfig(**yaml.safe_load((CONF / "tiny-roberta.yaml").read_text()))
    return replace(cfg, pretrained=str(base_dir), init="pretrained", arch={})


def make_adapter(base_dir, out, seed: int, method=None):
    cfg = base_cfg(base_dir)
    model = load_model(cfg).eval()
    mcfg = method_config(method or {"name": "lora", "targets": "qv", "r": 2, "alpha": 4})
    prepare(model, mcfg, "roberta")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    save_adapter(model, out, mcfg, cfg)
    return model


def logits(model):
    ids = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_info_prints_the_adapter(base_dir, tmp_path, capsys):
    make_adapter(base_dir, tmp_path / "a", seed=1)
    assert main(["adapter", "info", str(tmp_path / "a")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"]["name"] == "lora" and info["base"]["name"] == "tiny-roberta"
    # 2 blocks x (q, v) x (A 2x32 + B 32x2) + RoBERTa head (dense 32x32+32, out_proj 2x32+2)
    assert info["params"] == 2 * 2 * (64 + 64) + (32 * 32 + 32 + 2 * 32 + 2)
    assert info["tensors"] == 2 * 2 * 2 + 4


def test_merge_writes_a_plain_model(base_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    adapted = make_adapter(base_dir, tmp_path / "a", seed=1).eval()
    assert main(["adapter", "merge", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(logits(plain), logits(adapted), atol=1e-5)
    assert (tmp_path / "m" / "tokenizer_config.json").exists()  # the base's tokenizer travels along


def test_export_peft_loads_in_peft(base_dir, tmp_path):
    from peft import PeftModel

    adapted = make_adapter(base_dir, tmp_path / "a", seed=1).eval()
    assert main(["adapter", "export-peft", str(tmp_path / "a"), "--out", str(tmp_path / "p")]) == 0
    fresh = load_model(base_cfg(base_dir))
    peft_model = PeftModel.from_pretrained(fresh, tmp_path / "p").eval()
    assert torch.allclose(logits(peft_model), logits(adapted), atol=1e-5)


def test_combine_writes_a_loadable_adapter_with_its_report(base_dir, tmp_path, capsys):
    make_adapter(base_dir, tmp_path / "a", seed=1)
    make_adapter(base_dir, tmp_path / "b", seed=2)
    argv = ["adapter", "combine", str(tmp_path / "a"), str(tmp_path / "b")]
    assert (
        main([*argv, "--weights", "0.5", "0.5", "--rank", "1", "--out", str(tmp_path / "c")]) == 0
    )
    assert "relative error" in capsys.readouterr().out
    meta = json.loads((tmp_path / "c" / "adapter.json").read_text())
    assert meta["method"]["r"] == 1 and 0 < meta["combine"]["relative_error"] < 1
    model = load_model(base_cfg(base_dir)).eval()
    load_adapter(model, tmp_path / "c", "roberta", base=base_cfg(base_dir))
    assert torch.isfinite(logits(model)).all()


def test_errors_are_one_line_and_exit_2(base_dir, tmp_path, capsys):
    make_adapter(base_dir, tmp_path / "a", seed=1)
    (tmp_path / "a" / WEIGHTS).write_bytes(b"\x80\x04K\x01.")  # a pickle
    capsys.readouterr()  # drop the progress bars of building the adapter
    assert main(["adapter", "info", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pickle" in err and err.count("\n") == 1
    make_adapter(base_dir, tmp_path / "h", seed=1, method={"name": "adapter_houlsby"})
    assert main(["adapter", "merge", str(tmp_path / "h"), "--out", str(tmp_path / "m")]) == 2
    assert "cannot be merged" in capsys.readouterr().err
    assert main(["adapter", "combine", str(tmp_path / "h"), "--out", str(tmp_path / "c")]) == 2
    assert "only LoRA" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


def test_a_randomly_initialised_base_needs_base(tmp_path, capsys, base_dir):
    cfg = ModelConfig(**yaml.safe_load((CONF / "tiny-roberta.yaml").read_text()))
    torch.manual_seed(0)
    model = load_model(cfg)
    mcfg = method_config({"name": "lora", "r": 2})
    prepare(model, mcfg, "roberta")
    save_adapter(model, tmp_path / "a", mcfg, cfg)
    assert main(["adapter", "merge", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 2
    assert "pass --base" in capsys.readouterr().err
    # The same random weights saved as a directory serve as --base.
    argv = [
        "adapter",
        "merge",
        str(tmp_path / "a"),
        "--base",
        str(base_dir),
        "--out",
        str(tmp_path / "m"),
    ]
    assert main(argv) == 0
    assert (tmp_path / "m" / "config.json").exists()


def test_help_is_argparse_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["adapter", "--help"])
    assert exc.value.code == 0
    assert "info,merge,export-peft,combine" in capsys.readouterr().out


def test_out_never_destroys_a_run_folder_or_unrelated_files(base_dir, tmp_path, capsys):
    """merge/combine/export-peft --out: a run folder (or a folder inside one) is refused, as is an
    existing folder of other files unless --force; a folder the command wrote can be rewritten."""
    make_adapter(base_dir, tmp_path / "a", seed=1)
    run = tmp_path / "run"
    make_adapter(base_dir, run, seed=2)
    (run / "result.json").write_text('{"status": "success"}')
    (run / "history.jsonl").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    for argv in (["merge", str(run), "--out", str(run)],
                 ["combine", str(run), str(run), "--out", str(run)],
                 ["export-peft", str(tmp_path / "a"), "--out", str(run / "peft")],
                 ["merge", str(run), "--out", str(run), "--force"]):  # fmt: skip
        assert main(["adapter", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the run folder" in err[0], err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing touched

    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("months of work")
    assert main(["adapter", "combine", str(tmp_path / "a"), "--out", str(other)]) == 2
    assert "holds files this command did not write" in capsys.readouterr().err
    assert (other / "thesis.tex").read_text() == "months of work"
    out = tmp_path / "c"
    assert main(["adapter", "combine", str(tmp_path / "a"), "--out", str(out)]) == 0
    assert main(["adapter", "combine", str(tmp_path / "a"), "--out", str(out)]) == 0  # its own
    assert main(["adapter", "combine", str(tmp_path / "a"), "--out", str(other), "--force"]) == 0
