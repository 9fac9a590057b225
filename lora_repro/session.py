"""One run's folder, and everything written into it: log.txt, history.jsonl, wandb and result.json.

A Session never builds, trains or evaluates: train.py does, and hands it rows to log and the
finished record to write. Only rank 0 writes.
"""

from __future__ import annotations

import logging
import logging.handlers
import shutil
import time
from typing import Any

from lora_repro import identity, record
from lora_repro.config import RunConfig
from lora_repro.distributed import Runtime, on_main

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Session:
    def __init__(self, cfg: RunConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.started, self.cpu0 = time.time(), time.process_time()
        self.folder = identity.run_dir(cfg)
        self.chash = identity.config_hash(cfg)
        self.finished: dict[str, Any] | None = None
        self.check_prior()
        self.history = record.History(self.folder / "history.jsonl")
        self.wandb = None
        # Setup messages are held until the run folder exists, then land at the top of log.txt.
        self.buffer = logging.handlers.MemoryHandler(10_000, flushLevel=logging.CRITICAL + 1)
        self.file_handler: logging.Handler | None = None
        # log.txt holds INFO lines even when the caller configured nothing (library use, tests).
        self.root_level = logging.getLogger().level
        if rt.main:
            logging.getLogger().addHandler(self.buffer)
            logging.getLogger().setLevel(min(self.root_level, logging.INFO))

    def check_prior(self) -> None:
        """Read what the folder holds: an identical finished run sets `finished` (the caller skips
        it); a different config is a ConfigError. Checked again once the folder's lock is held."""
        from lora_repro.data import fingerprint

        rt = self.rt
        self.data_fingerprint = fingerprint(self.cfg.task)
        state = on_main(
            lambda: identity.prior_state(self.folder, self.chash, self.data_fingerprint),
            rt.rank, rt.world,
        )  # fmt: skip
        self.finished = record.read_json(self.folder / "result.json") if state == "done" else None

    def clean_leftovers(self) -> None:
        """What a killed attempt can leave: temp files of interrupted atomic writes, half-written
        checkpoint folders, and (killed after result.json) the checkpoint of a finished run."""
        if not self.rt.main or not self.folder.exists():
            return
        for tmp in [*self.folder.glob(".*.tmp"), *self.folder.glob("checkpoint/.tmp-step-*")]:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if self.finished is not None and not self.cfg.train.keep_checkpoint:
            shutil.rmtree(self.folder / "checkpoint", ignore_errors=True)

    def open_folder(self) -> None:
        """Create the run folder: config.yaml, log.txt (with the setup log so far), wandb."""
        if not self.rt.main:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "result.json").unlink(missing_ok=True)  # a failed attempt's record
        identity.write_config(self.folder, self.cfg, self.chash)
        self.file_handler = logging.FileHandler(self.folder / "log.txt")
        self.file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.buffer.setTarget(self.file_handler)
        self.buffer.flush()
        logging.getLogger().removeHandler(self.buffer)
        logging.getLogger().addHandler(self.file_handler)
        if self.cfg.logging.wandb_mode != "disabled":
            import wandb  # optional dependency (lora_repro[wandb])

            self.wandb = wandb.init(
                project=self.cfg.logging.wandb_project, mode=self.cfg.logging.wandb_mode,
                name=identity.run_id(self.cfg), id=self.chash, resume="allow",
                config=self.cfg.to_dict(),
            )  # fmt: skip

    def log_row(self, row: dict[str, Any]) -> None:
        """One history.jsonl row (train loss, an evaluation, the decode), mirrored to wandb."""
        if not self.rt.main:
            return
        self.history.append(row)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "event"}, step=row["step"])
        if row["event"] == "eval":
            log.info(
                "step %d: %s", row["step"], {k: round(v, 4) for k, v in row.items() if "/" in k}
            )

    def finish(self, rec: record.RunRecord) -> None:
        """Write result.json (rank 0), drop the checkpoint of a finished run, close logging."""
        if self.rt.main:
            if rec.status != "success":
                log.error("run failed: %s", rec.error)
            record.write_result(self.folder, rec)
            if rec.status == "success" and not self.cfg.train.keep_checkpoint:
                shutil.rmtree(self.folder / "checkpoint", ignore_errors=True)
            if self.wandb is not None:
                self.wandb.summary.update(rec.metrics.best)
                self.wandb.finish(exit_code=0 if rec.status == "success" else 1)
        self.close()

    def close(self) -> None:
        root = logging.getLogger()
        root.setLevel(self.root_level)
        for h in (self.buffer, self.file_handler):
            if h is not None and h in root.handlers:
                root.removeHandler(h)
        if self.file_handler is not None:
            self.file_handler.close()
