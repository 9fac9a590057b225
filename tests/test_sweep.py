"""Sweep planning (which runs a relaunch submits, MNLI-init staging) and `collect`, on run folders
written by hand with lora_repro.record (no training)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from lora_repro import identity, record, sweep
from lora_repro.cli import main
from lora_repro.collect import collect
from lora_repro.config import RunConfig
from lora_repro.errors import ConfigError


def loader(runs_dir: Path):
    """load(overrides) -> RunConfig, standing in for Hydra's composition of `task=`/`seed=`/`train.lr=`."""

    def load(overrides: list[str]) -> RunConfig:
        kv = dict(o.lstrip("+").split("=", 1) for o in overrides)
        cfg = {
            "model": {"name": "tiny-roberta", "family": "roberta", "init": "random", "arch": {"x": 1}},
            "task": {"name": kv.get("task", "sst2")},
            "method": {"name": "lora"},
            "train": {"lr": float(kv.get("train.lr", 5e-4)), "init_from": kv.get("train.init_from", "").strip("'") or None},
            "experiment": kv.get("experiment", "t"),
            "seed": int(kv.get("seed", 0)),
            "runs_dir": str(runs_dir),
        }  # fmt: skip
        return RunConfig.from_dict(cfg)

    return load


def finish(cfg: RunConfig, status: str = "success") -> Path:
    """Write what a finished run leaves: config.yaml, result.json (and its adapter on success)."""
    folder, chash = identity.run_dir(cfg), identity.config_hash(cfg)
    identity.write_config(folder, cfg, chash)
    rec = {
        "status": status,
        "config_hash": chash,
        "run": {"id": identity.run_id(cfg), "folder": str(folder)},
        "config": cfg.to_dict(),
    }
    record.write_result(folder, rec)
    if status == "success":
        (folder / sweep.ADAPTER).write_bytes(b"weights")
    return folder


def test_relaunch_plans_only_runs_without_success(tmp_path: Path):
    load = loader(tmp_path)
    jobs = [[f"seed={s}"] for s in range(4)]
    assert [p.state for p in sweep.plan(jobs, load, {})] == ["todo"] * 4
    finish(load(["seed=0"]))
    finish(load(["seed=1"]), "failed")
    finish(load(["seed=2"]), "oom")
    (identity.run_dir(load(["seed=3"])) / "checkpoint").mkdir(parents=True)  # killed mid-run
    planned = sweep.plan(jobs, load, {})
    assert [p.state for p in planned] == ["done", "todo", "todo", "todo"]
    assert [sweep.outcome(p) for p in planned] == ["success", "failed", "oom", "no record"]
    assert planned[1].run_id == identity.run_id(load(["seed=1"]))
    lines = sweep.plan_lines([p for p in planned if p.state == "todo"]).splitlines()
    assert [shlex.split(x) for x in lines] == [["seed=1"], ["seed=2"], ["seed=3"]]


def test_a_run_another_experiment_already_ran_is_reused_not_retrained(tmp_path: Path):
    """hydra.sweeper.reuse: the seed-0 sweep's run is the main study's seed-0 run (same config but
    for the experiment): its record is copied, marked reused_from; other runs still train."""
    load, results = loader(tmp_path), tmp_path / "results"
    src = finish(load(["seed=0", "experiment=sweep"]))
    finish(load(["seed=1", "experiment=sweep", "train.lr=1e-3"]))  # another config: not reused
    collect("sweep", tmp_path, results)
    jobs = [["seed=0"], ["seed=1"]]
    planned = sweep.plan(jobs, load, {}, ["sweep"], results)
    assert [p.state for p in planned] == ["reuse", "todo"]
    assert sweep.plan(jobs, load, {}, [], results)[0].state == "todo"  # only when asked
    sweep.adopt(planned[0], load(["seed=0"]))
    assert [p.state for p in sweep.plan(jobs, load, {}, ["sweep"], results)] == ["done", "todo"]
    rec = json.loads((identity.run_dir(load(["seed=0"])) / "result.json").read_text())
    assert rec["config"]["experiment"] == "t" and rec["run"]["id"].startswith("t/")
    assert rec["config_hash"] == identity.config_hash(load(["seed=0"]))
    assert rec["run"]["reused_from"] == str(src)
    _, counts, _ = collect("t", tmp_path, results)
    assert counts["success"] == 1
    assert [p.state for p in sweep.plan(jobs, load, {}, ["nope"], results)] == ["done", "todo"]


def test_a_source_finished_but_not_collected_is_reused_and_one_in_progress_warns(
    tmp_path: Path, caplog
):
    """A preset launched while the one it reuses still runs: a source that has since finished is
    reused from its folder (no collect needed); one still running or queued in a live launch is
    named in a warning, since the run would train twice."""
    import os

    from lora_repro import lock, status

    load, results = loader(tmp_path), tmp_path / "results"
    src = finish(load(["seed=0", "experiment=rank"]))  # finished, not collected
    running = identity.run_dir(load(["seed=1", "experiment=rank"]))
    running.mkdir(parents=True)
    (running / lock.NAME).write_text(json.dumps({**lock.owner(), "pid": os.getppid()}))
    cfg2 = load(["seed=2", "experiment=rank"])  # handed to a launcher still waiting (this process)
    queued = sweep.Planned(["seed=2"], identity.run_id(cfg2), identity.run_dir(cfg2), "todo")
    jobs = [["seed=0"], ["seed=1"], ["seed=2"], ["seed=3"]]
    with status.queued([queued]):
        planned = sweep.plan(jobs, load, {}, ["rank"], results)
        assert [p.state for p in planned] == ["reuse", "todo", "todo", "todo"]
        assert planned[0].source["run"]["folder"] == str(src)
        status.warn_in_progress(planned, ["rank"], load)
    assert "2 run(s) of this sweep are still queued or running as rank" in caplog.text
    caplog.clear()
    status.warn_in_progress(planned, ["rank"], load)  # that launch has returned: only the lock
    assert "1 run(s) of this sweep are still queued or running as rank" in caplog.text


def test_a_collected_run_whose_folder_is_gone_is_restored_not_retrained(tmp_path: Path):
    """A CPU study on machines that lose runs/ between sessions: the runs collected into
    results/<experiment>.jsonl count as done; the relaunch writes their records back, trains the rest."""
    load, results = loader(tmp_path), tmp_path / "results"
    jobs = [["seed=0"], ["seed=1"]]
    folder = finish(load(["seed=0"]))
    collect("t", tmp_path, results)
    want = json.loads((folder / "result.json").read_text())
    shutil.rmtree(tmp_path / "t")  # a new machine: only git (results/) survived
    planned = sweep.plan(jobs, load, {}, [], results)
    assert [p.state for p in planned] == ["reuse", "todo"]
    sweep.adopt(planned[0], load(["seed=0"]))
    # the same record, not a copy marked reused_from
    assert json.loads((folder / "result.json").read_text()) == want
    assert [p.state for p in sweep.plan(jobs, load, {}, [], results)] == ["done", "todo"]
    _, counts, _ = collect("t", tmp_path, results)
    assert counts["success"] == 1 and counts["kept from before"] == 0


def test_mnli_init_waits_then_points_at_the_mnli_adapter(tmp_path: Path):
    load = loader(tmp_path)
    jobs = [["task=mnli", "seed=0"], ["task=mrpc", "seed=0"], ["task=sst2", "seed=0"]]
    mnli = load(["task=mnli", "seed=0"])
    adapter = str(identity.run_dir(mnli) / sweep.ADAPTER)
    first = sweep.plan(jobs, load, {"mrpc": "mnli"})
    assert [p.state for p in first] == ["todo", "waiting", "todo"]
    assert first[1].needs == identity.run_id(mnli)
    assert first[1].overrides == ["task=mrpc", "seed=0", f"++train.init_from='{adapter}'"]
    # the MRPC run's identity includes where it starts from (record puts its hash in the folder name)
    mrpc = load(first[1].overrides)
    assert mrpc.train.init_from == adapter and first[1].run_id == identity.run_id(mrpc)
    finish(mnli, "failed")
    assert (
        sweep.plan(jobs, load, {"mrpc": "mnli"})[1].state == "waiting"
    )  # not from a failed MNLI run
    finish(mnli)
    second = sweep.plan(jobs, load, {"mrpc": "mnli"})
    assert [p.state for p in second] == ["done", "todo", "todo"] and second[1].needs is None
    finish(mrpc)
    assert sweep.plan(jobs, load, {"mrpc": "mnli"})[1].state == "done"


def test_plan_refuses_a_folder_holding_another_config(tmp_path: Path):
    load = loader(tmp_path)
    cfg = load(["seed=0"])
    folder = finish(cfg)
    rec = json.loads((folder / "result.json").read_text())
    rec["config_hash"] = "0" * 16
    (folder / "result.json").write_text(json.dumps(rec))
    with pytest.raises(ConfigError, match="different config"):
        sweep.plan([["seed=0"]], load, {})


def test_collect_sorted_merged_and_fresh(tmp_path: Path, capsys):
    load = loader(tmp_path / "runs")
    for seed, status in [(2, "success"), (0, "failed"), (1, "success")]:
        finish(load([f"seed={seed}"]), status)
    res = tmp_path / "results"
    argv = ["collect", "t", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(res)]
    assert main(argv) == 0
    first, env = capsys.readouterr().out.strip().splitlines()
    assert first == f"{res / 't.jsonl'}: 3 records (1 failed, 2 success)"
    assert env == "environment: torch ?, transformers ? (3 runs)"  # these records carry none
    lines = (res / "t.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["run"]["id"][-2:] for r in recs] == ["s0", "s1", "s2"]  # sorted by run id
    assert lines[0] == json.dumps(recs[0], sort_keys=True)  # keys sorted: diffable
    # a record collected elsewhere stays; a run found again replaces its line
    other = dict(recs[0], status="success", run={"id": "t/elsewhere/s9"}, config_hash="x")
    (res / "t.jsonl").write_text("\n".join([*lines, json.dumps(other)]) + "\n")
    finish(load(["seed=0"]))  # seed 0 rerun: now a success
    assert main(argv) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .splitlines()[0]
        .endswith("4 records (4 success); 1 kept from an earlier collect")
    )
    assert main([*argv, "--fresh"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[0].endswith("3 records (3 success)")
    assert main(["collect", "nope", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_sweeper_stages_runs_that_start_from_another_runs_adapter(
    tmp_path: Path, monkeypatch, caplog
):
    """The skip_done sweeper end to end (Hydra's basic launcher, tiny runs): MRPC waits for SST-2 and
    starts from its adapter (the MNLI-init mechanism with tasks the fixtures have); a relaunch
    submits nothing."""
    monkeypatch.setenv("GLUE_DIR", str(Path(__file__).parent / "fixtures" / "glue"))
    args = ["train", "-m", "experiment=smoke", f"runs_dir={tmp_path}", "task=mrpc,sst2",
            "train.max_steps=2", "train.eval_every=null", "+hydra.sweeper.init_from.mrpc=sst2"]  # fmt: skip
    with caplog.at_level("INFO"):
        assert main(args) == 0
    log = caplog.text
    assert "sweep plan: 2 runs: 1 to run, 1 waiting" in log and "2 runs: 2 success" in log
    launched = [m.split("task=")[1].split()[0] for m in re.findall(r"#\d+ : .*", log)]
    assert launched == ["sst2", "mrpc"]  # two stages: the source first
    sst2, mrpc = (json.loads(next(tmp_path.glob(f"smoke/*/{t}/*/*/s0/result.json")).read_text())
                  for t in ("sst2", "mrpc"))  # fmt: skip
    src = Path(sst2["run"]["folder"]) / sweep.ADAPTER
    assert mrpc["config"]["train"]["init_from"] == str(src) and src.is_file()
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "sweep plan: 2 runs: 2 done" in caplog.text and not re.findall(r"#\d+ : ", caplog.text)


def test_status_reads_every_state_from_the_folders(tmp_path: Path, capsys, monkeypatch):
    """`lora-repro status`: done with its metric, failed with its error, running (a live lock),
    unfinished (a folder, no record, no live owner), missing, from the same overrides as train -m."""
    import os

    import toytask

    from lora_repro import lock, status, train

    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    base = ["experiment=smoke", "task.name=toy", f"runs_dir={tmp_path}", "train.eval_every=null",
            "task.train_limit=null", "task.eval_limit=null", "logging.log_every=1",
            "train.max_steps=2"]  # fmt: skip
    cfg = {s: toytask.config(tmp_path, "train.max_steps=2", f"seed={s}") for s in range(7)}
    train.run(cfg[0])
    failed = finish(cfg[1], "failed")
    rec = json.loads((failed / "result.json").read_text())
    record.write_result(failed, {**rec, "error": "RuntimeError: boom\nTraceback ..."})
    folders = {s: identity.run_dir(c) for s, c in cfg.items()}
    folders[2].mkdir(parents=True)
    (folders[2] / lock.NAME).write_text(json.dumps({**lock.owner(), "pid": os.getppid()}))
    folders[3].mkdir(parents=True)  # killed: no record, no lock
    # seed 5: handed to a launcher that is still waiting (this process); seed 6: its launcher is gone
    planned = {s: sweep.Planned([f"seed={s}"], identity.run_id(cfg[s]), folders[s], "todo")
               for s in (5, 6)}  # fmt: skip
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that has exited
    with status.queued([planned[5]]):
        manifest = next((tmp_path / status.QUEUED).glob("*.json"))
        dead = tmp_path / status.QUEUED / "dead.json"
        dead.write_text(json.dumps({"owner": {**lock.owner(), "pid": gone.pid},
                                    "folders": [str(folders[6])]}))  # fmt: skip
        assert main(["status", *base, "seed=0,1,2,3,4,5,6"]) == 0
    assert not manifest.exists()  # removed when the launch returns
    assert not dead.exists()  # a killed launcher's, removed by the status that found it dead
    out = capsys.readouterr().out.splitlines()
    by_seed = {int(line.split()[1].rsplit("/s", 1)[1]): line for line in out[:-1]}
    assert by_seed[0].startswith("done ") and "dev/accuracy = " in by_seed[0]
    assert by_seed[1].startswith("failed ") and by_seed[1].endswith("RuntimeError: boom")
    assert by_seed[2].startswith("running ") and f"pid {os.getppid()} on " in by_seed[2]
    assert by_seed[3].startswith("unfinished ") and by_seed[4].startswith("missing ")
    assert by_seed[5].startswith("queued ") and f"launched by pid {os.getpid()} " in by_seed[5]
    assert by_seed[6].startswith("missing ")
    assert out[-1] == "7 runs: 1 done, 1 failed, 2 missing, 1 queued, 1 running, 1 unfinished"
    assert main(["status", "seed=0"]) == 2
    assert "status needs experiment=<name>" in capsys.readouterr().err


def test_concurrent_collects_never_clash(tmp_path: Path):
    """Two collects of one experiment at once (a cron job and a user): unique temp names, so neither
    crashes and the file is always whole."""
    from concurrent.futures import ThreadPoolExecutor

    load = loader(tmp_path / "runs")
    for seed in range(5):
        finish(load([f"seed={seed}"]))
    res = tmp_path / "results"

    def one(_: int) -> int:
        return collect("t", tmp_path / "runs", res)[1]["success"]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(40))) == [5] * 40
    assert len((res / "t.jsonl").read_text().splitlines()) == 5
    assert not list(res.glob(".*.tmp"))


def test_an_unknown_grid_is_one_error_line_and_exit_2(capsys):
    from lora_repro.cli import main

    code = main(["train", "-m", "experiment=table3_e2e", "hydra.sweeper.only=[gpt2-small]",
                 "hydra.sweeper.dry_run=true"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == ("error: hydra.sweeper.only: no grid 'gpt2-small'; this preset's grids: "
                       "gpt2-medium, gpt2-large") and not any("Traceback" in e for e in err)  # fmt: skip
