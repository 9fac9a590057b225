"""Typed run configuration. YAML (conf/) holds values; these dataclasses hold types and checks.

The CLI converts Hydra's composed DictConfig into a RunConfig exactly once (`RunConfig.from_dict`);
nothing below the CLI sees a DictConfig.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lora_repro.errors import ConfigError, check_choice, check_positive
from lora_repro.methods import method_config
from lora_repro.methods.base import MethodConfig
from lora_repro.models import ModelConfig

TASK_KINDS = ("glue", "nlg")


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

    def __post_init__(self) -> None:
        check_choice("task kind", self.kind, TASK_KINDS)
        check_choice("task source", self.source, ("local", "hub"))
        check_positive("task max_length", self.max_length)
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None:
                check_positive(f"task {name}", value)


@dataclass
class TrainConfig:
    """The loop's hyperparameters (paper per-task values live in conf/train/)."""

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
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast, GPU)
    eval_every: int | None = None  # steps; None = at each epoch end
    checkpoint_every: int | None = None  # steps; checkpoints are also written at epoch ends
    classifier_dropout: float | None = None  # Table 10 (DeBERTa)
    init_from: str | None = None  # adapter file to start from (MNLI init for MRPC/RTE/STS-B)
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


@dataclass
class LoggingConfig:
    wandb_mode: str = "disabled"  # disabled | offline | online
    wandb_project: str = "lora_repro"
    progress: bool = True  # tqdm bars (quiet anyway when not a TTY)

    def __post_init__(self) -> None:
        check_choice("logging wandb_mode", self.wandb_mode, ("disabled", "offline", "online"))


@dataclass
class RunConfig:
    model: ModelConfig
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    experiment: str = "default"
    seed: int = 0
    runs_dir: str = "runs"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> RunConfig:
        """Typed config from the composed plain dict; unknown keys are one-line errors."""

        def build(kind: type, values: dict[str, Any] | None, what: str) -> Any:
            values = dict(values or {})
            known = {f.name for f in fields(kind)}
            extra = sorted(set(values) - known)
            if extra:
                raise ConfigError(f"unknown key(s) {extra} in {what}; valid: {sorted(known)}")
            return kind(**values)

        top = {k: v for k, v in cfg.items() if k not in ("model", "task", "method", "train")}
        top.pop("logging", None)
        known_top = {f.name for f in fields(cls)}
        return cls(
            model=build(ModelConfig, cfg["model"], "model"),
            task=build(TaskConfig, cfg["task"], "task"),
            method=method_config(cfg["method"]),
            train=build(TrainConfig, cfg.get("train"), "train"),
            logging=build(LoggingConfig, cfg.get("logging"), "logging"),
            **{k: v for k, v in top.items() if k in known_top},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
