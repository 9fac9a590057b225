"""Run identity, folders and records: tags, hash, skip/resume/refuse, atomic writes, failed records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import toytask

from lora_repro import identity, record, sweep, train
from lora_repro.errors import ConfigError


@pytest.fixture(autouse=True)
def _toy(monkeypatch):
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cfg_for(tmp_path: Path, *overrides: str):
    return toytask.config(tmp_path, *overrides)


# --- identity ---------------------------------------------------------------------------------------


def test_tags_name_the_swept_keys(tmp_path):
    cfg = cfg_for(tmp_path)
    assert identity.method_tag(cfg) == "lora_qv_r8_a8"
    assert identity.hparam_tag(cfg) == "lr0.001_bs8_steps4_len64"
    assert (
        identity.run_id(cfg) == "smoke/tiny-roberta/toy/lora_qv_r8_a8/lr0.001_bs8_steps4_len64/s0"
    )
    cfg = cfg_for(
        tmp_path, "method.r=4", "method.alpha=16", "method.targets=qkvo", "method.dropout=0.1"
    )
    assert identity.method_tag(cfg) == "lora_qkvo_r4_a16_do0.1"
    assert identity.method_tag(cfg_for(tmp_path, "method=bitfit")) == "bitfit"
    assert identity.method_tag(cfg_for(tmp_path, "method=full_topk")) == "full_topk_k2"
    cfg = cfg_for(tmp_path, "train.weight_decay=0.1", "train.warmup_steps=500", "seed=3")
    assert identity.hparam_tag(cfg) == "lr0.001_bs8_steps4_wd0.1_ws500_len64"
    assert (
        identity.run_dir(cfg)
        == tmp_path / "smoke/tiny-roberta/toy/lora_qv_r8_a8" / identity.hparam_tag(cfg) / "s3"
    )


def test_hash_ignores_locations_and_memory_knobs_but_not_hyperparameters(tmp_path):
    base = identity.config_hash(cfg_for(tmp_path))
    same = [
        cfg_for(tmp_path / "elsewhere"),
        cfg_for(tmp_path, "task.data_dir=/some/where"),
        cfg_for(
            tmp_path, "train.grad_accum=2", "train.eval_batch_size=8", "train.checkpoint_every=1"
        ),
        cfg_for(tmp_path, "logging.wandb_mode=offline", "train.device=cpu"),
        cfg_for(tmp_path, "train.lr=0.001"),  # same value, other spelling
    ]
    assert all(identity.config_hash(c) == base for c in same)
    different = [
        cfg_for(tmp_path, "train.lr=2e-3"),
        cfg_for(tmp_path, "+model.arch.hidden_dropout_prob=0.2"),
        cfg_for(tmp_path, "method.init=gaussian"),
        cfg_for(tmp_path, "seed=1"),
    ]
    assert len({identity.config_hash(c) for c in different} | {base}) == 5


def test_integer_and_float_spellings_are_one_config(tmp_path):
    a = cfg_for(tmp_path, "train.max_steps=null", "train.epochs=2")
    b = cfg_for(tmp_path, "train.max_steps=null", "train.epochs=2.0")
    assert a.train.epochs == 2.0 and isinstance(a.train.epochs, float)
    assert identity.config_hash(a) == identity.config_hash(b) and identity.run_id(
        a
    ) == identity.run_id(b)


# --- files ------------------------------------------------------------------------------------------


def test_write_atomic_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    record.write_atomic(path, "old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        record.write_atomic(path, "new")
    assert path.read_text() == "old"


def test_history_truncate_drops_rows_after_an_offset(tmp_path):
    h = record.History(tmp_path / "history.jsonl")
    h.append({"step": 1})
    mark = h.offset()
    h.append({"step": 2})
    h.truncate(mark)
    h.append({"step": 3})
    assert h.rows() == [{"step": 1}, {"step": 3}]


def test_prior_state(tmp_path):
    folder = tmp_path / "run"
    assert identity.prior_state(folder, "abc") == "new"
    folder.mkdir()
    assert identity.prior_state(folder, "abc") == "resume"
    (folder / "config.yaml").write_text("# config_hash: abc\nseed: 0\n")
    assert identity.prior_state(folder, "abc") == "resume"
    with pytest.raises(ConfigError, match="different config"):
        identity.prior_state(folder, "xyz")
    record.write_result(folder, {"status": "failed", "config_hash": "abc"})
    assert identity.prior_state(folder, "abc") == "resume"  # a failed attempt is tried again
    record.write_result(folder, {"status": "success", "config_hash": "abc"})
    assert identity.prior_state(folder, "abc") == "done"


# --- runs -------------------------------------------------------------------------------------------


def test_finished_run_is_skipped_and_a_clashing_config_refused(tmp_path):
    first = train.run(cfg_for(tmp_path))
    result = tmp_path / first["run"]["id"] / "result.json"
    written = result.read_bytes()
    again = train.run(cfg_for(tmp_path))
    assert again["skipped"] and result.read_bytes() == written  # not re-run, not rewritten
    # A key that is not in the folder name (here the model's dropout) changes the hash: refused.
    with pytest.raises(ConfigError, match="different config"):
        train.run(cfg_for(tmp_path, "+model.arch.hidden_dropout_prob=0.3"))
    assert result.read_bytes() == written


def test_a_failing_run_writes_a_failed_record_then_a_retry_succeeds(tmp_path, monkeypatch):
    real_fit = train.fit

    def broken(s):
        raise RuntimeError("something broke at step 2")

    monkeypatch.setattr(train, "fit", broken)
    with pytest.raises(train.RunFailed, match="something broke"):
        train.run(cfg_for(tmp_path))
    folder = tmp_path / identity.run_id(cfg_for(tmp_path))
    rec = json.loads((folder / "result.json").read_text())
    assert rec["status"] == "failed" and "RuntimeError: something broke" in rec["error"]
    assert rec["config_hash"] == identity.config_hash(cfg_for(tmp_path))
    assert rec["metrics"]["primary"] is None and rec["cost"]["adapter_bytes"] == 0
    assert "something broke" in (folder / "log.txt").read_text()

    monkeypatch.setattr(train, "fit", real_fit)
    assert train.run(cfg_for(tmp_path))["status"] == "success"
    assert json.loads((folder / "result.json").read_text())["status"] == "success"


def test_out_of_memory_is_recorded_as_oom(tmp_path, monkeypatch):
    def oom(s):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "fit", oom)
    with pytest.raises(train.RunFailed):
        train.run(cfg_for(tmp_path))
    rec = json.loads((tmp_path / identity.run_id(cfg_for(tmp_path)) / "result.json").read_text())
    assert rec["status"] == "oom"


def test_a_config_error_in_setup_writes_nothing(tmp_path):
    cfg = cfg_for(tmp_path, "train.batch_size=200")  # more than the 96 toy examples
    with pytest.raises(ConfigError, match="batch_size=200 exceeds the 96"):
        train.run(cfg)
    assert not (tmp_path / "smoke").exists()
    with pytest.raises(ConfigError, match="must divide evenly"):
        train.run(cfg_for(tmp_path, "train.grad_accum=3"))
    assert not (tmp_path / "smoke").exists()


def test_a_nan_loss_fails_the_run_and_history_stays_strict_json(tmp_path, monkeypatch):
    real = train.loss_sum
    calls = []

    def diverging(logits, labels, head, smoothing):
        calls.append(1)
        loss = real(logits, labels, head, smoothing)
        return loss * float("nan") if len(calls) >= 3 else loss  # diverges at the third step

    monkeypatch.setattr(train, "loss_sum", diverging)
    with pytest.raises(train.RunFailed, match="loss became nan at step 3"):
        train.run(cfg_for(tmp_path))
    folder = tmp_path / identity.run_id(cfg_for(tmp_path))
    rec = json.loads((folder / "result.json").read_text())
    assert (
        rec["status"] == "failed"
        and rec["error"] == "FloatingPointError: loss became nan at step 3"
    )
    for line in (folder / "history.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    history = record.History(tmp_path / "h.jsonl")
    history.append({"event": "eval", "step": 1, "dev/pearson": float("nan")})
    assert history.rows() == [{"event": "eval", "step": 1, "dev/pearson": None}]


def test_data_paths_resolve_from_the_checkout_and_demo_ignores_glue_dir(tmp_path, monkeypatch):
    from lora_repro.compose import values
    from lora_repro.config import RunConfig
    from lora_repro.paths import REPO

    monkeypatch.setenv("GLUE_DIR", "/somewhere/with/full/glue")
    demo = RunConfig.from_dict(values(["experiment=demo"]))
    assert demo.task.data_dir == str(REPO / "data" / "glue" / "SST-2")  # the shipped subset
    monkeypatch.chdir(tmp_path)  # outside the repository
    monkeypatch.setenv("GLUE_DIR", "data/glue")
    smoke = RunConfig.from_dict(values(["experiment=smoke"]))
    assert smoke.task.data_dir == str(REPO / "data" / "glue" / "SST-2")


def test_a_finished_run_is_not_reused_on_other_data(tmp_path, monkeypatch):
    """task.data_dir is not part of a run's identity: the record's data fingerprint is checked."""
    from lora_repro.compose import values
    from lora_repro.config import RunConfig
    from lora_repro.data import BUILDERS, fingerprint

    monkeypatch.setitem(BUILDERS, "glue", "lora_repro.data.glue")  # real SST-2 rows, not the toy

    fixtures = Path(__file__).parent / "fixtures" / "glue" / "SST-2"
    data = tmp_path / "SST-2"
    data.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_text((fixtures / name).read_text())
    argv = ["experiment=smoke", f"task.data_dir={data}", f"runs_dir={tmp_path / 'runs'}"]
    cfg = RunConfig.from_dict(values(argv))
    rec = train.run(cfg)
    assert rec["task"]["data_fingerprint"] == fingerprint(cfg.task) is not None
    assert train.run(cfg)["skipped"]  # the same data: reused
    lines = (data / "train.tsv").read_text().splitlines()
    (data / "train.tsv").write_text("\n".join(lines[:-1]) + "\n")  # one row fewer
    with pytest.raises(
        ConfigError,
        match=r"finished on other data \(fingerprint [0-9a-f]+; the files read now: [0-9a-f]+\)",
    ):
        train.run(cfg)
    with pytest.raises(ConfigError, match="finished on other data"):
        sweep.plan([argv], lambda ov: RunConfig.from_dict(values(ov)), {})
