"""Load a model (hub name, local dir, installed package, random init, or meta device) and describe
where each family keeps the matrices that methods adapt.

The FAMILIES table is the only place that knows module names: methods ask it for "the q projection of
block i" and never spell transformers' attribute paths themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lora_repro.errors import ConfigError, check_choice
from lora_repro.sources import resolve_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where a target letter lives inside one block: a module path, and for fused projections
    (GPT-2's c_attn computes q, k, v in one matrix) which of `n_slices` equal output slices."""

    path: str
    slice: int | None = None
    n_slices: int = 1


@dataclass(frozen=True)
class Family:
    """What a method needs to know about a model family."""

    blocks: str  # path from `model.base_model` to the ModuleList of transformer blocks
    targets: dict[str, Target]  # letter -> location inside one block
    heads: tuple[str, ...]  # task-head module names, top level or in the base model (see is_head)
    attention: str  # path inside a block to the self-attention module (prefix tuning hooks here)
    # Bottleneck adapters go where Houlsby et al. (2019, Fig. 2) put them: on a sub-layer's output after
    # its projection and dropout, before the residual add (and, in post-LN blocks, before the LayerNorm).
    # These paths name that last module (the sub-layer's output dropout); adapters wrap it.
    ffn_out: str  # path inside a block to the FFN output's last module before the residual
    attn_out: str  # path inside a block to the attention output's last module before the residual
    # Path from `model.base_model` to the module whose output holds the per-position hidden states before
    # any pooling ("" = the base model itself); prefix tuning drops its positions from that output.
    sequence_out: str = ""
    # The transformers config key of the classification head's dropout (train.classifier_dropout,
    # Table 10's DeBERTa cls_dropout); None: the head has no dropout (GPT-2's `score` is one Linear).
    head_dropout_key: str | None = "classifier_dropout"
    default_head: str = "classification"  # what the paper trains this family for (bench's default)


def _encoder(proj: str, head_dropout_key: str = "classifier_dropout") -> Family:
    """BERT, RoBERTa and DeBERTa-v2 blocks share one layout; only the q/k/v projections' names differ
    (`query` vs `query_proj`). The pooler is part of the task head in all three:
    - BERT's pooler (dense + tanh on [CLS]) feeds the classifier: it is the head's dense layer, as
      RoBERTa's classifier.dense is, and trains with the head under every method (Table 2's heads are
      trained; the counts exclude them). Frozen, a checkpoint whose pooler was never trained for
      classification (sentence-transformers' MiniLM: zero bias, weight std 0.009) starves the small
      methods. RoBERTa's classification model has no pooler, so this matches nothing there.
    - DeBERTa's ContextPooler is not in the pretrained checkpoint: it is part of the new head."""
    return Family(
        blocks="encoder.layer",
        targets={
            "q": Target(f"attention.self.query{proj}"),
            "k": Target(f"attention.self.key{proj}"),
            "v": Target(f"attention.self.value{proj}"),
            "o": Target("attention.output.dense"),
            "f1": Target("intermediate.dense"),
            "f2": Target("output.dense"),
        },
        heads=("pooler", "classifier"),
        attention="attention.self",
        ffn_out="output.dropout",
        attn_out="attention.output.dropout",
        sequence_out="encoder",
        head_dropout_key=head_dropout_key,
    )


_BERT = _encoder("")  # RoBERTa is BERT's architecture, retrained: same module names

# Target letters, §4.2: the paper's Wq, Wk, Wv, Wo, plus the two FFN matrices as f1 (in) and f2 (out).
FAMILIES: dict[str, Family] = {
    "roberta": _BERT,
    "bert": _BERT,
    "deberta-v2": _encoder("_proj", head_dropout_key="cls_dropout"),
    "gpt2": Family(
        blocks="h",
        targets={
            # c_attn is one Conv1D producing [q | k | v]; the paper adapts the q and v slices only.
            "q": Target("attn.c_attn", slice=0, n_slices=3),
            "k": Target("attn.c_attn", slice=1, n_slices=3),
            "v": Target("attn.c_attn", slice=2, n_slices=3),
            "o": Target("attn.c_proj"),
            "f1": Target("mlp.c_fc"),
            "f2": Target("mlp.c_proj"),
        },
        heads=("score",),
        attention="attn",
        ffn_out="mlp.dropout",
        attn_out="attn.resid_dropout",
        head_dropout_key=None,
        default_head="lm",  # Table 3: E2E, WebNLG, DART
    ),
}

# The Llama family (Llama, Qwen2, Mistral, SmolLM share the module names). The paper's letters for
# attention; its MLP is gated, SiLU(x W_gate) * (x W_up) W_down, so three letters: g (gate_proj),
# u (up_proj) and d (down_proj), not the two-matrix FFN's f1/f2.
FAMILIES["llama"] = Family(
    blocks="layers",
    targets={
        "q": Target("self_attn.q_proj"),
        "k": Target(
            "self_attn.k_proj"
        ),  # grouped-query attention: fewer k/v heads, narrower output
        "v": Target("self_attn.v_proj"),
        "o": Target("self_attn.o_proj"),
        "g": Target("mlp.gate_proj"),
        "u": Target("mlp.up_proj"),
        "d": Target("mlp.down_proj"),
    },
    heads=(
        "score",
    ),  # the classification head; lm_head is the (often tied) frozen output embedding
    attention="self_attn",
    # No dropout module after the projections: adapters wrap the projections themselves, the last
    # module of each sub-layer before its residual add (pre-norm blocks: no LayerNorm after it).
    ffn_out="mlp.down_proj",
    attn_out="self_attn.o_proj",
    head_dropout_key=None,  # LlamaForSequenceClassification's score is one Linear
    default_head="lm",
)

# transformers' model_type -> our family name
MODEL_TYPES = {
    "roberta": "roberta", "bert": "bert", "deberta-v2": "deberta-v2", "gpt2": "gpt2",
    "llama": "llama", "qwen2": "llama", "mistral": "llama",
}  # fmt: skip


@dataclass
class ModelConfig:
    """A model: its family, where pretrained weights come from, and its architecture numbers so it can
    also be built with random weights or on the meta device without any download."""

    name: str
    family: str
    pretrained: str | None = None  # hub id, local dir, or "pkg:<python package>[/subdir]"
    tokenizer: str | None = None  # same kinds of source; None = the pretrained source
    init: str = "pretrained"  # pretrained | random
    arch: dict[str, Any] = field(default_factory=dict)  # AutoConfig values
    # Storage of the frozen base weights: bf16 halves their memory (a base that does not fit a GPU
    # in fp32); trained tensors stay fp32 for the optimizer. Needs train.precision=bf16 (autocast).
    dtype: str = "fp32"  # fp32 | bf16

    def __post_init__(self) -> None:
        check_choice("model family", self.family, FAMILIES)
        check_choice("model init", self.init, ("pretrained", "random"))
        check_choice("model dtype", self.dtype, ("fp32", "bf16"))
        if self.init == "pretrained" and not self.pretrained:
            raise ConfigError(f"model {self.name!r} has init=pretrained but no `pretrained` source")
        if self.init == "random" and not self.arch:
            raise ConfigError(f"model {self.name!r} has init=random but no `arch` numbers")


def position_limit(config: Any) -> int | None:
    """Tokens a sequence may have with absolute position embeddings (None: relative positions only)."""
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa-v2 XL/XXL: relative only
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and config.model_type in ("roberta", "xlm-roberta"):
        limit -= config.pad_token_id + 1  # RoBERTa's positions start after the padding index
    return limit


def hf_config(cfg: ModelConfig, **overrides: Any):
    """The transformers config: from the `arch` numbers when given, else from the pretrained source."""
    from transformers import AutoConfig

    if cfg.arch:
        arch = dict(cfg.arch)
        model_type = arch.pop("model_type")
        return AutoConfig.for_model(model_type, **{**arch, **overrides})
    return AutoConfig.from_pretrained(resolve_source(cfg.pretrained), **overrides)


def _auto_class(head: str):
    import transformers

    heads = {"classification": "AutoModelForSequenceClassification", "lm": "AutoModelForCausalLM"}
    check_choice("model head", head, heads)
    return getattr(transformers, heads[head])


def load_model(
    cfg: ModelConfig,
    head: str = "classification",
    num_labels: int = 2,
    device: str = "cpu",
    config_overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the model. `device="meta"` allocates nothing (for counting parameters of full-size
    architectures); `cfg.init="random"` uses the `arch` numbers; otherwise weights are loaded from the
    hub, a local directory or an installed package, the same code path users run on a cluster.
    `config_overrides` set transformers config values (e.g. the classifier dropout of Table 10)."""
    auto = _auto_class(head)
    extra = {"num_labels": num_labels} if head == "classification" else {}
    extra.update(config_overrides or {})
    if device == "meta" or cfg.init == "random":
        config = hf_config(cfg, **extra)
        with torch.device(device):
            model = auto.from_config(config)
    else:
        src = resolve_source(cfg.pretrained)
        log.info("loading %s from %s", cfg.name, src)
        try:
            model = auto.from_pretrained(src, **extra).to(device)
        except OSError as exc:  # not on the hub, no such directory, missing weights file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load {src!r} ({first}); point model.pretrained at a local "
                              "directory or a hub id that exists") from None  # fmt: skip
    if model.config.pad_token_id is None:
        # GPT-2 has no pad token; sequence classification finds the last real token through it.
        model.config.pad_token_id = model.config.eos_token_id
    return model


def tokenizer_source(cfg: ModelConfig) -> str:
    """Where the tokenizer comes from (tiny test models borrow an offline one)."""
    src = cfg.tokenizer or cfg.pretrained
    if not src:
        raise ConfigError(f"model {cfg.name!r} names neither a tokenizer nor a pretrained source")
    return resolve_source(src)


def blocks(model: nn.Module, family: str) -> nn.ModuleList:
    """The ModuleList of transformer blocks."""
    return model.base_model.get_submodule(FAMILIES[family].blocks)


def head_params(model: nn.Module, family: str) -> dict[str, nn.Parameter]:
    """Parameters of the task head (empty for a causal LM, whose output layer is tied)."""
    return {n: p for n, p in model.named_parameters() if is_head(model, family, n)}


def is_head(model: nn.Module, family: str, name: str) -> bool:
    """Whether parameter `name` is in the task head: a top-level head module (`classifier`, DeBERTa's
    `pooler`) or one inside the base model (BERT's `bert.pooler`)."""
    names, parts = FAMILIES[family].heads, name.split(".")
    prefix = getattr(model, "base_model_prefix", None)
    return parts[0] in names or (len(parts) > 1 and parts[0] == prefix and parts[1] in names)
