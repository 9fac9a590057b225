"""End to end on the tiny GPT-2: train a few steps on real E2E dev pairs, beam-search the test
inputs, score, and reproduce the same predictions from a saved run with `lora-repro generate`; and the
same through `lora-repro train`, which decodes with the best weights after training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lora_repro.cli import main
from lora_repro.compose import compose
from lora_repro.config import RunConfig
from lora_repro.data import nlg
from lora_repro.losses import lm_loss
from lora_repro.methods import prepare
from lora_repro.metrics.nlg import java_available
from lora_repro.models import load_model, tokenizer_source
from lora_repro.nlg.generate import run_generation
from lora_repro.weights.state import save_adapter

FIX = Path(__file__).parent / "fixtures" / "nlg" / "e2e"
METRICS = ["BLEU", "NIST", "ROUGE_L", "CIDEr"] if java_available() else ["BLEU", "NIST"]


def run_config(tmp_path: Path) -> RunConfig:
    overrides = [
        "model=tiny-gpt2",
        "task=e2e",
        f"task.data_dir={FIX}",
        "task.files={train: valid.txt, validation: valid.txt, test: test.txt}",  # no E2E train offline
        "task.max_length=128",
        "task.train_limit=64",
        "task.eval_limit=3",
        "task.beam_size=3",
        "task.max_new_tokens=12",
        # full fine-tuning: on a random 32-wide base, LoRA on q and v barely moves the output
        # distribution in a few steps; the LoRA path is the same code (prepare + trainable params)
        "method=full",
    ]
    return RunConfig.from_dict(OmegaConf.to_container(compose(overrides), resolve=True))


def build_model(cfg: RunConfig) -> torch.nn.Module:
    torch.manual_seed(
        cfg.seed
    )  # the tiny base is random: the seed rebuilds it (as cmd_generate does)
    model = load_model(cfg.model, "lm")
    prepare(model, cfg.method, cfg.model.family)
    return model


def test_train_decode_score_and_regenerate(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    cfg = run_config(tmp_path)
    tok = AutoTokenizer.from_pretrained(tokenizer_source(cfg.model))
    data = nlg.build(cfg.task, tok)
    model = build_model(cfg)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable

    batch = data.collate(list(data.train[:8]))
    opt = torch.optim.AdamW(trainable.values(), lr=2e-2)
    losses = []
    model.train()
    for _ in range(12):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = lm_loss(logits, batch["labels"], cfg.task.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses  # it fits the batch's completions

    run_dir = tmp_path / "run"
    scores = run_generation(model, tok, cfg.task, run_dir, batch_size=2, metrics=METRICS)
    assert set(scores) == set(METRICS) and all(math.isfinite(v) for v in scores.values())
    out = run_dir / "generate"
    rows = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["context"].startswith("name : Blue Spice")
    assert [r["prediction"] for r in rows] == (out / "test.hyp.txt").read_text().splitlines()
    assert json.loads((out / "test.scores.json").read_text())["BLEU"] == scores["BLEU"]

    # the same files re-scored by `lora-repro score` give the same numbers
    rescored = tmp_path / "rescored.json"
    argv = [
        "score",
        "--task",
        "e2e",
        "--refs",
        str(out / "test.ref.txt"),
        "--hyps",
        str(out / "test.hyp.txt"),
    ]
    assert main([*argv, "--metrics", ",".join(METRICS), "--out", str(rescored)]) == 0
    assert json.loads(rescored.read_text()) == pytest.approx(scores)

    # a saved run decodes to the same predictions through `lora-repro generate`
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    save_adapter(model, run_dir, cfg.method, cfg.model, head="lm", task="e2e")
    first = (out / "test.hyp.txt").read_text()
    assert (
        main(["generate", "--run-dir", str(run_dir), "--batch-size", "3", "--metrics", "BLEU"]) == 0
    )
    (again,) = run_dir.glob("decode/test_beam*/test.hyp.txt")  # its own folder, named from settings
    assert again.read_text() == first
    # a --limit decode never overwrites what training recorded, nor the full decode
    recorded = (out / "test.scores.json").read_text()
    assert main(["generate", "--run-dir", str(run_dir), "--limit", "1", "--metrics", "BLEU"]) == 0
    assert (out / "test.scores.json").read_text() == recorded
    (short,) = run_dir.glob("decode/*_n1/test.hyp.txt")
    assert len(short.read_text().splitlines()) == 1 and again.read_text() == first


def test_generate_and_score_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--run-dir", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    hyps, refs = tmp_path / "h.txt", tmp_path / "r.txt"
    hyps.write_text("a\nb\n")
    refs.write_text("a\nA\n\nb\n\nc\n")
    assert main(["score", "--task", "e2e", "--refs", str(refs), "--hyps", str(hyps)]) == 2
    err = capsys.readouterr().err
    assert "2 hypotheses" in err and "3 reference groups" in err


def test_train_cli_decodes_with_the_best_weights_and_records_the_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`lora-repro train task=e2e`: the best evaluation is chosen by validation loss, the run's adapter
    holds its weights, the test inputs are beam-searched with them, and the scores are the record's
    metrics (primary: test/BLEU); `lora-repro generate` on the run folder decodes the same text."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(
            [
                "train", "model=tiny-gpt2", "task=e2e", f"task.data_dir={FIX}",
                "task.files={train: valid.txt, validation: valid.txt, test: test.txt}",
                "task.max_length=128", "task.train_limit=32", "task.eval_limit=4",
                "task.beam_size=2", "task.max_new_tokens=8", "task.generate_metrics=[BLEU,NIST]",
                "train.batch_size=4", "train.max_steps=6", "train.eval_every=2", "train.lr=1e-2",
                "train.warmup_steps=0", "logging.progress=false", f"runs_dir={tmp_path}",
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0, out
    (result,) = tmp_path.glob("default/tiny-gpt2/e2e/*/*/s0/result.json")
    folder = result.parent
    rec = json.loads(result.read_text())
    m = rec["metrics"]
    assert rec["status"] == "success"
    assert (m["primary_metric"], m["selected_by"]) == ("test/BLEU", "validation/loss")
    assert "test/BLEU = " in out and "(primary)" in out

    # the best evaluation is the lowest validation loss of the three
    evals = [r for r in (json.loads(x) for x in (folder / "history.jsonl").read_text().splitlines())
             if r["event"] == "eval"]  # fmt: skip
    assert [r["step"] for r in evals] == [2, 4, 6]
    best = min(evals, key=lambda r: r["validation/loss"])
    assert m["best_step"] == best["step"]
    assert m["best"]["validation/loss"] == best["validation/loss"]

    # the decode's scores are the record's, from the files run_generation wrote
    scores = json.loads((folder / "generate" / "test.scores.json").read_text())
    assert scores["split"] == "test" and set(scores) == {"split", "BLEU", "NIST"}
    assert m["primary"] == m["best"]["test/BLEU"] == scores["BLEU"] and math.isfinite(
        scores["BLEU"]
    )
    assert m["best"]["test/NIST"] == scores["NIST"]
    hyps = (folder / "generate" / "test.hyp.txt").read_text()
    assert len(hyps.splitlines()) == 4

    # the run's adapter (state.py format) regenerates the same text: the decode used those weights
    meta = json.loads((folder / "adapter.json").read_text())
    assert meta["method"]["name"] == "lora" and meta["head"] == "lm"
    assert main(["generate", "--run-dir", str(folder), "--metrics", "BLEU"]) == 0
    assert (folder / "generate" / "test.hyp.txt").read_text() == hyps


def test_score_keeps_an_empty_last_hypothesis_and_names_non_utf8_files(
    tmp_path: Path, capsys
) -> None:
    refs = tmp_path / "r.txt"
    refs.write_text("the cat sat\n\nthe dog ran\n")
    hyps = tmp_path / "h.txt"
    hyps.write_text("the cat sat\n\n")  # the last hypothesis is empty: two lines, not one
    assert (
        main(
            [
                "score",
                "--task",
                "e2e",
                "--refs",
                str(refs),
                "--hyps",
                str(hyps),
                "--metrics",
                "BLEU",
            ]
        )
        == 0
    )
    capsys.readouterr()
    hyps.write_bytes(b"the cat \xff sat\nthe dog ran\n")
    assert main(["score", "--task", "e2e", "--refs", str(refs), "--hyps", str(hyps)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0] == f"error: {hyps} is not UTF-8 text (byte 8: b'\\xff'); valid: UTF-8 files"
    )
