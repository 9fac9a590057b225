"""Typed run configuration. YAML (conf/) holds values; these dataclasses hold types and checks.

The CLI converts Hydra's composed DictConfig into a RunConfig exactly once (`RunConfig.from_dict`);
nothing below the CLI sees a DictConfig.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lora_repro.errors import ConfigError, check_choice, check_positive, check_types
from lora_repro.methods import method_config
from lora_repro.methods.base import MethodConfig
from lora_repro.models import ModelConfig
from lora_repro.paths import REPO

TASK_KINDS = ("glue", "nlg")
# Top-level keys of conf/config.yaml that only other commands read (`count` builds a bare model with
# them); the trainer takes head and num_labels from the task data instead.
OTHER_COMMAND_KEYS = ("head", "num_labels", "by_task")  # by_task: read by interpolation only


def check_range(what: str, value: float, low: float, high: float) -> None:
    """Raise a ConfigError unless low <= value < high."""
    if not low <= value < high:
        raise ConfigError(f"{what} must be in [{low}, {high}), got {value!r}")


@dataclass
class TaskConfig:
    """A dataset and how it is read. GLUE tasks: mnli, sst2, mrpc, cola, qnli, qqp, rte, stsb;
    NLG tasks: e2e, webnlg, dart."""

    name: str
    kind: str = "glue"  # glue | nlg
    source: str = "local"  # local (files under data_dir) | hub (datasets' copy)
    data_dir: str | None = None
    max_length: int = 128
    train_limit: int | None = None  # seeded subset of the training split (CPU-sized studies)
    eval_limit: int | None = None  # first N examples of each eval split (tests only)
    # NLG only (Table 11)
    label_smoothing: float = 0.0
    beam_size: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    files: dict[str, str] | None = None  # NLG split -> file (relative to data_dir); None = defaults
    generate_split: str = "test"  # NLG: the split `generate` decodes and scores after training
    generate_metrics: list[str] | None = None  # NLG: scores computed after training; None = all
    # NLG: texts that also end a hypothesis during the beam search when the tokenizer has them as one
    # token (the released decoder passes --eos_token_id 628, GPT-2's "\n\n", next to 50256)
    stop_strings: list[str] | None = None
    # NLG without a train split (E2E offline): train on the train file minus this many seeded-random
    # inputs, which (with all their references) are the validation split
    validation_holdout: int | None = None

    def __post_init__(self) -> None:
        if self.data_dir and not Path(self.data_dir).expanduser().is_absolute():
            # Shipped data (data/glue/SST-2) and relative $GLUE_DIRs resolve from the checkout, so
            # a preset runs the same from any working directory.
            self.data_dir = str(REPO / self.data_dir)
        check_choice("task kind", self.kind, TASK_KINDS)
        check_choice("task source", self.source, ("local", "hub"))
        check_positive("task max_length", self.max_length)
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None:
                check_positive(f"task {name}", value)
        check_range("task label_smoothing", self.label_smoothing, 0.0, 1.0)
        if self.generate_metrics is not None:
            from lora_repro.metrics.nlg import E2E_METRICS, TRIPLE_METRICS

            if not isinstance(self.generate_metrics, (list, tuple)):
                raise ConfigError(
                    f"task generate_metrics must be a list such as [BLEU,NIST], "
                    f"got {self.generate_metrics!r}"
                )

            valid = E2E_METRICS if self.name == "e2e" else TRIPLE_METRICS
            for metric in self.generate_metrics:
                check_choice(f"task {self.name} generate_metrics entry", metric, valid)


@dataclass
class TrainConfig:
    """The loop's hyperparameters (paper per-task values live in conf/recipe/)."""

    lr: float = 5e-4
    batch_size: int = 16
    eval_batch_size: int = 64
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06  # Table 9
    warmup_steps: int | None = None  # overrides warmup_ratio when set (Table 11: 500)
    max_grad_norm: float | None = 1.0
    # Batches of similar length (seeded, resumable; batching.epoch_order): less padding, faster CPU
    # steps. Off by default: it changes which examples share a batch, so results differ from an
    # ungrouped run at the same seed.
    group_by_length: bool = False
    precision: str = "fp32"  # fp32 | bf16 (autocast; CPU too) | fp16 (autocast, GPU only)
    eval_every: int | None = None  # steps; None = at each epoch end
    checkpoint_every: int | None = None  # steps; checkpoints are also written at epoch ends
    keep_checkpoint: bool = False  # keep checkpoint/ after a successful run (default: delete it)
    classifier_dropout: float | None = None  # Table 10 (DeBERTa)
    # Recompute each block's activations in the backward pass instead of keeping them: activation
    # memory drops from ~all blocks to ~one, for ~1/3 more compute (transformers' checkpointing).
    activation_checkpointing: bool = False
    # How processes share the model (lora_repro/parallel.py): ddp (a copy each) | fsdp (FSDP2 shards
    # every block, frozen base included: for bases that do not fit one device). One process: no-op.
    strategy: str = "ddp"
    init_from: str | None = None  # adapter dir/file; method tensors, no head (MNLI init, §5.1)
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_positive("train lr", self.lr)
        check_positive("train batch_size", self.batch_size)
        check_positive("train eval_batch_size", self.eval_batch_size)
        check_positive("train grad_accum", self.grad_accum)
        if self.max_steps is None:
            check_positive("train epochs", self.epochs)
        else:
            check_positive("train max_steps", self.max_steps)
        check_choice("train precision", self.precision, ("fp32", "bf16", "fp16"))
        check_choice("train device", self.device, ("auto", "cpu", "cuda"))
        check_choice("train strategy", self.strategy, ("ddp", "fsdp"))
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ConfigError(
                "train.strategy=fsdp with train.precision=fp16: the fp16 grad scaler does not "
                "handle sharded gradients here; valid: train.precision=bf16 or fp32"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"train weight_decay must be >= 0, got {self.weight_decay!r}")
        check_range("train warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"train warmup_steps must be >= 0, got {self.warmup_steps!r}")
        for name in ("max_grad_norm", "eval_every", "checkpoint_every"):
            if getattr(self, name) is not None:
                check_positive(f"train {name}", getattr(self, name))
        if self.classifier_dropout is not None:
            check_range("train classifier_dropout", self.classifier_dropout, 0.0, 1.0)
        if self.num_workers < 0:
            raise ConfigError(f"train num_workers must be >= 0, got {self.num_workers!r}")


@dataclass
class LoggingConfig:
    wandb_mode: str = "disabled"  # disabled | offline | online
    wandb_project: str = "lora_repro"
    progress: bool = True  # tqdm bars (quiet anyway when not a TTY)
    log_every: int = 10  # optimizer steps between training-loss lines in history.jsonl

    def __post_init__(self) -> None:
        check_choice("logging wandb_mode", self.wandb_mode, ("disabled", "offline", "online"))
        check_positive("logging log_every", self.log_every)


@dataclass
class RunConfig:
    """Everything one training run depends on. Its identity (identity.config_hash) is this minus the
    keys that only say where things are or how they are shown (identity.NON_IDENTITY)."""

    model: ModelConfig
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    experiment: str = "default"
    seed: int = 0
    runs_dir: str = "runs"
    cluster: dict[str, Any] = field(default_factory=dict)  # launcher settings; not part of identity

    def __post_init__(self) -> None:
        if not self.experiment or "/" in self.experiment:
            raise ConfigError(f"experiment name {self.experiment!r} must be non-empty, without '/'")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> RunConfig:
        """Typed config from the composed plain dict; unknown or missing keys are one-line errors."""

        def build(kind: type, values: dict[str, Any] | None, what: str) -> Any:
            if values is not None and not isinstance(values, dict):
                raise ConfigError(f"{what} must be a mapping, got {values!r}")
            values = dict(values or {})
            known = {f.name for f in fields(kind)}
            extra = sorted(set(values) - known)
            if extra:
                raise ConfigError(f"unknown key(s) {extra} in {what}; valid: {sorted(known)}")
            check_types(kind, values, what)
            try:
                return kind(**values)
            except TypeError as exc:  # a required field is missing
                raise ConfigError(f"{what}: {exc}") from None

        for group in ("model", "task", "method"):
            if not (cfg.get(group) or {}).get("name"):  # root defaults alone (model.dtype) are none
                raise ConfigError(f"no {group} selected; choose one with {group}=<name>")
        groups = ("model", "task", "method", "train", "logging")
        top = {k: v for k, v in cfg.items() if k not in groups and k not in OTHER_COMMAND_KEYS}
        known_top = {f.name for f in fields(cls)} - set(groups)
        extra = sorted(set(top) - known_top)
        if extra:
            raise ConfigError(f"unknown top-level key(s) {extra}; valid: {sorted(known_top)}")
        return cls(
            model=build(ModelConfig, cfg["model"], "model"),
            task=build(TaskConfig, cfg["task"], "task"),
            method=method_config(cfg["method"]),
            train=build(TrainConfig, cfg.get("train"), "train"),
            logging=build(LoggingConfig, cfg.get("logging"), "logging"),
            **top,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
