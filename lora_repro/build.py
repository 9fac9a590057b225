"""Build what one run trains: tokenizer, task data, model with its method, counts. A plain function,
called before anything is written, so every ConfigError surfaces with nothing half-made."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lora_repro.config import RunConfig
from lora_repro.data import TaskData, build_task
from lora_repro.distributed import seed_everything
from lora_repro.errors import ConfigError
from lora_repro.hf_compat import enable_checkpointing
from lora_repro.losses import lm_window
from lora_repro.methods import count_params, prepare
from lora_repro.models import FAMILIES, load_model, position_limit, tokenizer_source

log = logging.getLogger(__name__)


@dataclass
class Built:
    tokenizer: Any
    data: TaskData
    model: nn.Module
    counts: dict[str, int]  # count_params: trainable / method / head / total
    # Tiny test models borrow a BERT tokenizer, whose pair segment ids a model with a single segment
    # embedding (RoBERTa) or none (GPT-2) cannot take.
    use_types: bool
    # The LM head projects only the positions the loss reads (losses.lm_window), where the model's
    # forward takes transformers' `logits_to_keep` (every causal LM of FAMILIES does).
    trim_logits: bool = False

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Model inputs: the batch without labels (the loss is ours)."""
        drop = {"labels"} if self.use_types else {"labels", "token_type_ids"}
        return {k: v for k, v in batch.items() if k not in drop}

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits of `batch` and the labels they line up with. `model` is the built model or
        its DDP wrapper (which passes keywords through)."""
        kwargs, labels = self.inputs(batch), batch["labels"]
        if self.trim_logits:
            keep = lm_window(labels)
            kwargs["logits_to_keep"] = keep
            labels = labels[:, labels.shape[1] - keep :]
        return model(**kwargs).logits, labels


def build(cfg: RunConfig, device: torch.device, world: int = 1) -> Built:
    """Tokenizer, task data, model, method and init_from for `cfg` on `device`."""
    from transformers import AutoTokenizer

    t = cfg.train
    if cfg.model.dtype == "bf16" and t.precision != "bf16":
        raise ConfigError(
            f"model.dtype=bf16 stores the base in bf16 and needs train.precision=bf16 (autocast), "
            f"got train.precision={t.precision!r}; valid: train.precision=bf16, or model.dtype=fp32"
        )
    shards = world * t.grad_accum
    if t.batch_size % shards:
        raise ConfigError(
            f"train.batch_size={t.batch_size} must divide evenly over {world} process(es) "
            f"x grad_accum={t.grad_accum}"
        )
    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(cfg.model))
    data = build_task(cfg.task, tokenizer)
    if len(data.train) < t.batch_size:
        raise ConfigError(
            f"train.batch_size={t.batch_size} exceeds the {len(data.train)} training examples"
        )
    if data.primary_metric is None:
        raise ConfigError(f"task {cfg.task.name!r} names no primary metric")
    split = data.selected_by.split("/")[0]
    if split not in data.evals:
        raise ConfigError(
            f"task {cfg.task.name!r}: the best epoch is chosen by {data.selected_by}, but "
            f"the task has no {split!r} split; it has: {sorted(data.evals) or 'none'}"
        )
    # FSDP shards a CPU-built model onto the devices (parallel.wrap): never whole on one GPU
    fsdp = t.strategy == "fsdp" and world > 1
    model = make_model(cfg, data, torch.device("cpu") if fsdp else device)
    if t.init_from:
        init_from(model, cfg, t.init_from)
    counts = count_params(model, cfg.model.family)
    log.info("trainable %s", counts)
    use_types = getattr(model.config, "type_vocab_size", 0) > 1
    trim = data.head == "lm" and "logits_to_keep" in inspect.signature(model.forward).parameters
    return Built(tokenizer, data, model, counts, use_types, trim)


def make_model(cfg: RunConfig, data: TaskData, device: torch.device) -> nn.Module:
    """The base model with its method applied, seeded by the run's seed: the same weights on every
    rank, and again when rank 0 needs an unsharded copy to decode with (job.after_fit)."""
    t = cfg.train
    overrides = {}
    if t.classifier_dropout is not None:  # Table 10 (DeBERTa's cls_dropout)
        key = FAMILIES[cfg.model.family].head_dropout_key
        if key is None:
            raise ConfigError(
                f"train.classifier_dropout: the {cfg.model.family} classification head has no dropout"
            )
        overrides[key] = t.classifier_dropout
    seed_everything(cfg.seed)  # the model's random parts must not depend on the data pipeline
    model = load_model(cfg.model, data.head, data.num_labels, str(device), overrides)
    limit = position_limit(model.config)
    if limit is not None and cfg.task.max_length > limit:  # past the last position: an index error
        raise ConfigError(
            f"task.max_length={cfg.task.max_length} exceeds {cfg.model.name}'s {limit} positions; "
            f"valid: at most {limit}"
        )
    prepare(model, cfg.method, cfg.model.family)
    if cfg.model.dtype == "bf16":  # frozen base in bf16; what trains (A, B, the head) in fp32
        for p in model.parameters():
            p.data = p.data.to(torch.float32 if p.requires_grad else torch.bfloat16)
    if t.activation_checkpointing:
        enable_checkpointing(model)
    return model


def init_from(model: nn.Module, cfg: RunConfig, path: str) -> None:
    """Start from a saved adapter's method tensors, never its task head: the paper starts MRPC,
    RTE and STS-B from the MNLI LoRA weights with a new head (§5.1, Table 9), and a head trained
    for other labels means nothing here even when the label count matches."""
    from lora_repro.weights import files, state

    try:
        meta = files.read_meta(path)
        if meta.method.name != cfg.method.name:
            raise ConfigError(
                f"the adapter was trained with method {meta.method.name!r}, this run uses "
                f"{cfg.method.name!r}"
            )
        name = getattr(cfg.method, "adapter_name", None)  # LoRA: refill this run's adapter
        state.load_adapter(
            model, path, cfg.model.family, base=cfg.model, name=name, with_head=False
        )
    except ConfigError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    log.info("init_from %s: loaded %s", path, meta.method)
