"""Everything around the training loop for one run: processes and device, the run folder, the built
data/model/method, logging (log.txt, history.jsonl, wandb, progress bars) and the final record.

train.py owns the loop and calls into a Session; a Session never trains.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import resource
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any

import torch
import torch.distributed as dist

from lora_repro import record
from lora_repro.config import RunConfig
from lora_repro.distributed import on_main, seed_everything, setup_distributed
from lora_repro.errors import ConfigError
from lora_repro.nlg.generate import run_generation

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Session:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.started, self.cpu0 = time.time(), time.process_time()
        self.rank, self.world, self.device = setup_distributed(cfg.train.device)
        self.folder = record.run_dir(cfg)
        self.chash = record.config_hash(cfg)
        self.state = on_main(
            lambda: record.prior_state(self.folder, self.chash), self.rank, self.world
        )
        self.finished = (
            record.read_json(self.folder / "result.json") if self.state == "done" else None
        )
        self.dtype = DTYPES[cfg.train.precision]
        if self.device.type != "cuda" and self.dtype != torch.float32:
            log.warning("train.precision=%s needs a GPU; training in fp32", cfg.train.precision)
            self.dtype = torch.float32
        self.progress = cfg.logging.progress and self.rank == 0 and sys.stderr.isatty()
        self.history = record.History(self.folder / "history.jsonl")
        self.resumed_from: int | None = None
        self.data = self.model = self.tokenizer = None
        self.counts: dict[str, int] = {}
        self.wandb = None
        # Setup messages are held until the run folder exists, then land at the top of log.txt.
        self.buffer = logging.handlers.MemoryHandler(10_000, flushLevel=logging.CRITICAL + 1)
        self.file_handler: logging.Handler | None = None
        # log.txt holds INFO lines even when the caller configured nothing (library use, tests).
        self.root_level = logging.getLogger().level
        if self.rank == 0:
            logging.getLogger().addHandler(self.buffer)
            logging.getLogger().setLevel(min(self.root_level, logging.INFO))

    # --- setup ----------------------------------------------------------------------------------

    def build(self) -> None:
        """Tokenizer, task data, model, method and init_from; ConfigErrors surface here, before
        anything is written."""
        from transformers import AutoTokenizer

        from lora_repro.data import build_task
        from lora_repro.methods import count_params, prepare
        from lora_repro.models import head_params, load_model, tokenizer_source

        cfg, t = self.cfg, self.cfg.train
        shards = self.world * t.grad_accum
        if t.batch_size % shards:
            raise ConfigError(
                f"train.batch_size={t.batch_size} must divide evenly over {self.world} process(es) "
                f"x grad_accum={t.grad_accum}"
            )
        seed_everything(cfg.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(cfg.model))
        self.data = build_task(cfg.task, self.tokenizer)
        if len(self.data.train) < t.batch_size:
            raise ConfigError(
                f"train.batch_size={t.batch_size} exceeds the {len(self.data.train)} training examples"
            )
        if self.data.primary_metric is None:
            raise ConfigError(f"task {cfg.task.name!r} names no primary metric")
        split = self.data.selected_by.split("/")[0]
        if split not in self.data.evals:
            raise ConfigError(
                f"task {cfg.task.name!r}: the best epoch is chosen by {self.data.selected_by}, but "
                f"the task has no {split!r} split; it has: {sorted(self.data.evals) or 'none'}"
            )
        overrides = {}
        if t.classifier_dropout is not None:  # Table 10 (DeBERTa's cls_dropout)
            key = {"deberta-v2": "cls_dropout", "gpt2": None}.get(
                cfg.model.family, "classifier_dropout"
            )
            if key is None:
                raise ConfigError(
                    "train.classifier_dropout: GPT-2's classification head has no dropout"
                )
            overrides[key] = t.classifier_dropout
        seed_everything(cfg.seed)  # the model's random parts must not depend on the data pipeline
        self.model = load_model(
            cfg.model, self.data.head, self.data.num_labels, str(self.device), overrides
        )
        prepare(self.model, cfg.method, cfg.model.family)
        self.head_names = set(head_params(self.model, cfg.model.family))
        if t.init_from:
            self.init_from(t.init_from)
        self.counts = count_params(self.model, cfg.model.family)
        # Tiny test models borrow a BERT tokenizer, whose pair segment ids a model with a single
        # segment embedding (RoBERTa) or none (GPT-2) cannot take.
        self.use_types = getattr(self.model.config, "type_vocab_size", 0) > 1
        log.info("trainable %s", self.counts)

    def init_from(self, path: str) -> None:
        """Start from a saved adapter's method tensors, never its task head: the paper starts MRPC,
        RTE and STS-B from the MNLI LoRA weights with a new head (§5.1, Table 9), and a head trained
        for other labels means nothing here even when the label count matches."""
        from lora_repro.weights import state

        cfg = self.cfg
        try:
            meta = state.read_meta(path)
            if meta.method.name != cfg.method.name:
                raise ConfigError(
                    f"the adapter was trained with method {meta.method.name!r}, this run uses "
                    f"{cfg.method.name!r}"
                )
            name = getattr(cfg.method, "adapter_name", None)  # LoRA: refill this run's adapter
            state.load_adapter(
                self.model, path, cfg.model.family, base=cfg.model, name=name, with_head=False
            )
        except ConfigError as exc:
            raise ConfigError(f"train.init_from: {exc}") from None
        log.info("init_from %s: loaded %s", path, meta.method)

    def open_folder(self) -> None:
        """Create the run folder: config.yaml, log.txt (with the setup log so far), wandb."""
        if self.rank != 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "result.json").unlink(missing_ok=True)  # a failed attempt's record
        record.write_config(self.folder, self.cfg, self.chash)
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
                name=record.run_id(self.cfg), id=self.chash, resume="allow", config=self.cfg.to_dict(),
            )  # fmt: skip

    # --- helpers the loop calls ---------------------------------------------------------------

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Model inputs: the batch without labels (the loss is ours)."""
        drop = {"labels"} if self.use_types else {"labels", "token_type_ids"}
        return {k: v for k, v in batch.items() if k not in drop}

    def autocast(self) -> Any:
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def tqdm(self, *args: Any, **kwargs: Any) -> Any:
        from tqdm import tqdm

        return tqdm(*args, disable=not self.progress, dynamic_ncols=True, **kwargs)

    def log_row(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.history.append(row)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "event"}, step=row["step"])
        if row["event"] == "eval":
            log.info(
                "step %d: %s", row["step"], {k: round(v, 4) for k, v in row.items() if "/" in k}
            )

    def save_adapter(self) -> None:
        """adapter.safetensors + adapter.json in the run folder (methods/state.py's format)."""
        from lora_repro.weights import state

        cfg = self.cfg
        state.save_adapter(
            self.model, self.folder, cfg.method, cfg.model, head=self.data.head, task=cfg.task.name
        )

    def load_adapter(self) -> None:
        """Put the saved (best) weights back into the model, head included."""
        from lora_repro.weights import state

        name = getattr(self.cfg.method, "adapter_name", None)
        state.load_adapter(self.model, self.folder, self.cfg.model.family, self.cfg.model, name)

    # --- after training -------------------------------------------------------------------------

    def after_training(self, outcome: dict[str, Any]) -> None:
        """NLG tasks: put the best evaluation's weights back (adapter.safetensors, chosen by validation
        loss) and decode `task.generate_split` with beam search (Table 11). The scores join the best
        evaluation as `<split>/<metric>`, so the record's primary metric is the decode's BLEU."""
        if self.cfg.task.kind != "nlg":
            return
        task = self.cfg.task
        if self.rank == 0:
            self.load_adapter()
            scores = run_generation(
                self.model, self.tokenizer, task, self.folder, self.cfg.train.eval_batch_size,
                task.generate_metrics,
            )  # fmt: skip
            named = {f"{task.generate_split}/{k}": v for k, v in scores.items()}
            best = outcome["best"]
            self.log_row(
                {"event": "generate", "step": outcome["steps"], "best_step": best["step"], **named}
            )
            log.info(
                "generate %s with the best weights (step %d): %s",
                task.generate_split,
                best["step"],
                named,
            )
            outcome["best"] = {**best, **named}
        if self.world > 1:
            dist.barrier()

    def finish(
        self, outcome: dict[str, Any] | None, failure: BaseException | None
    ) -> dict[str, Any]:
        """Write result.json (rank 0) and close logging; return the record."""
        status = "success" if failure is None else ("oom" if record.is_oom(failure) else "failed")
        rec = self.build_record(status, outcome, failure)
        if self.rank == 0:
            if status != "success":
                log.error("run failed: %s", rec["error"])
            record.write_result(self.folder, rec)
            if status == "success" and not self.cfg.train.keep_checkpoint:
                shutil.rmtree(self.folder / "checkpoint", ignore_errors=True)
            if self.wandb is not None:
                self.wandb.summary.update(rec["metrics"].get("best") or {})
                self.wandb.finish(exit_code=0 if status == "success" else 1)
        self.close()
        return rec

    def close(self) -> None:
        root = logging.getLogger()
        root.setLevel(self.root_level)
        for h in (self.buffer, self.file_handler):
            if h is not None and h in root.handlers:
                root.removeHandler(h)
        if self.file_handler is not None:
            self.file_handler.close()

    def build_record(
        self, status: str, outcome: dict[str, Any] | None, failure: BaseException | None
    ) -> dict:
        cfg, data, out = self.cfg, self.data, outcome or {}
        best = out.get("best") or {}
        primary = data.primary_metric if data is not None else None
        metrics = lambda row: {k: v for k, v in (row or {}).items() if "/" in k}  # noqa: E731 (<split>/<name>)
        # CPU time of this process next to wall time: a shared machine inflates the latter.
        wall, cpu = time.time() - self.started, time.process_time() - self.cpu0
        adapter = self.folder / "adapter.safetensors"
        adapter_bytes = adapter.stat().st_size if status == "success" and adapter.exists() else 0
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device), "cuda_max_allocated"
        else:  # Linux reports kilobytes
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_max_rss"
        started = datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds")
        task = {"name": cfg.task.name, "version": None}
        if data is not None:
            task.update(name=data.name, version=data.version, train_size=len(data.train))
            task["eval_sizes"] = {k: len(v) for k, v in data.evals.items()}
        train_time = out.get("train_time")
        return {
            "status": status,
            "error": None if failure is None else f"{type(failure).__name__}: {failure}"[:2000],
            "run": {
                "id": record.run_id(cfg),
                "experiment": cfg.experiment,
                "folder": str(self.folder),
                "started": started,
                "wall_time_s": wall,
                "resumed_from_step": self.resumed_from,
            },
            "config": cfg.to_dict(),
            "config_hash": self.chash,
            "task": task,
            "metrics": {
                "primary_metric": primary,
                "selected_by": data.selected_by if data is not None else None,
                "primary": best.get(primary),
                "best_step": best.get("step"),
                "best_epoch": best.get("epoch"),
                "best": metrics(best),
                "final": metrics(out.get("last")),
            },
            "cost": {
                **self.counts,
                "peak_memory_bytes": peak,
                "peak_memory_kind": kind,
                "steps": out.get("steps"),
                "train_time_s": train_time,
                "tokens_per_s": out["tokens"] / train_time if train_time else None,
                "wall_time_s": wall,
                "cpu_time_s": cpu,
                "adapter_bytes": adapter_bytes,
            },
            "environment": record.environment(
                self.device, str(self.dtype).removeprefix("torch."), self.world
            ),
        }
