"""Prefix tuning, the paper's PreEmbed and PreLayer baselines (§5.1).

- `prefix_embed` (PreEmbed): `length` trainable token embeddings prepended to the input, i.e. new
  "virtual tokens" whose word embeddings train (|Θ| = d_model · l_p, §5.1).
- `prefix_layer` (PreLayer, Li & Liang 2021): trainable key and value activations prepended at every
  layer's self-attention. We count what is stored, |Θ| = L · 2 · d_model · l_p (keys and values);
  the paper's §5.1 formula L · d_model · l_p counts one activation per layer. With `reparam`, the
  activations come from a small MLP over a (l_p × d) embedding during training, which Li & Liang
  (§4.3) found more stable; `PrefixTuning.materialize()` drops the MLP and keeps the activations.

How the prefix enters every family: methods/prefix_hooks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from lora_repro.errors import ConfigError, check_choice, check_positive
from lora_repro.methods.base import MethodConfig
from lora_repro.methods.lora import layer_shape
from lora_repro.methods.prefix_hooks import PrefixTuning
from lora_repro.models import FAMILIES, blocks, position_limit

ATTR = "prefix_tuning"  # the module's name on the model: parameters are `prefix_tuning.*`


@dataclass
class EmbedConfig(MethodConfig):
    name: str = "prefix_embed"
    length: int = 10  # l_p, number of virtual tokens
    # vocab: embeddings of `length` random vocabulary tokens (Lester et al. 2021's sampled-vocab init);
    # normal: N(0, init_std²)
    init: str = "vocab"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_positive("prefix length", self.length)
        check_choice("prefix init", self.init, ("vocab", "normal"))
        check_positive("prefix init_std", self.init_std)


@dataclass
class LayerConfig(EmbedConfig):
    name: str = "prefix_layer"
    # Li & Liang (§4.3): P = MLP(P') during training; hidden width 512 as in their code.
    reparam: bool = False
    reparam_hidden: int = 512
    # vocab: the keys/values the frozen model computes for `length` random vocabulary tokens (Li & Liang
    # §7.2: initialising with real activations helps); with reparam, those tokens' embeddings feed the MLP.

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("prefix reparam_hidden", self.reparam_hidden)


def _kv_pieces(block: nn.Module, family: str) -> dict[str, list[tuple[int, int, int]]]:
    """Projection path -> output column ranges of the keys (0) and values (1)."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for j, letter in enumerate("kv"):
        t = FAMILIES[family].targets[letter]
        width = layer_shape(block.get_submodule(t.path))[1] // t.n_slices
        start = 0 if t.slice is None else t.slice * width
        out.setdefault(t.path, []).append((start, start + width, j))
    return out


@torch.no_grad()
def init_from_tokens(
    model: nn.Module, prefix: PrefixTuning, ids: torch.Tensor | None = None
) -> None:
    """Initialise from real tokens (`ids`, default: `length` random vocabulary ids): PreEmbed and the
    reparameterised PreLayer take their embeddings, direct PreLayer the keys and values the frozen
    model computes for them in every block (Li & Liang §7.2: real-word activations init well)."""
    emb = model.base_model.get_input_embeddings().weight
    if ids is None:
        ids = torch.randint(0, emb.shape[0], (prefix.length,), device=emb.device)
    if ids.shape != (prefix.length,):
        raise ConfigError(
            f"prefix init needs {prefix.length} token ids, got shape {tuple(ids.shape)}"
        )
    if prefix.kv is None:
        prefix.embedding.copy_(emb[ids])
        return
    prefix.enabled, prefix._capture, training = False, {}, model.training
    try:
        model.eval()  # no dropout in the activations we copy
        model.base_model(input_ids=ids.unsqueeze(0).to(emb.device))
        for layer in range(prefix.n_layers):
            for j in (0, 1):
                prefix.kv[layer, j].copy_(prefix._capture[(layer, j)])
    finally:
        prefix.enabled, prefix._capture = True, None
        prefix._attn_input.clear()
        model.train(training)


def apply(model: nn.Module, cfg: EmbedConfig, family: str) -> PrefixTuning:
    """Attach the prefix as `model.prefix_tuning` and hook it in; the prefix is all that trains."""
    if hasattr(model, ATTR):
        raise ConfigError("the model already has a prefix; one prefix method per model")
    fam = FAMILIES[family]
    block_list = blocks(model, family)
    d = model.config.hidden_size
    ref = model.base_model.get_input_embeddings().weight
    layer = isinstance(cfg, LayerConfig)
    pieces = [_kv_pieces(b, family) for b in block_list] if layer else []
    d_kv = 0
    if layer:
        start, end, _ = pieces[0][fam.targets["k"].path][0]
        d_kv = end - start
    prefix = PrefixTuning(
        cfg.length,
        d,
        len(block_list) if layer else 0,
        d_kv,
        cfg.reparam_hidden if layer and cfg.reparam else 0,
    ).to(device=ref.device, dtype=ref.dtype)
    prefix.max_positions = position_limit(model.config)
    setattr(model, ATTR, prefix)
    base = model.base_model
    seq = base.get_submodule(fam.sequence_out) if fam.sequence_out else base
    prefix._handles.append(base.register_forward_pre_hook(prefix.base_pre_hook, with_kwargs=True))
    prefix._handles.append(seq.register_forward_hook(prefix.sequence_hook))
    prefix._handles.append(model.register_forward_hook(prefix.top_hook))
    for i, block in enumerate(block_list):
        if not layer:
            break
        attn = block.get_submodule(fam.attention)
        hook = partial(prefix.attn_pre_hook, i)
        prefix._handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        for path, group in pieces[i].items():
            proj = block.get_submodule(path)
            prefix._handles.append(proj.register_forward_hook(partial(prefix.proj_hook, i, group)))
    if ref.device.type != "meta":  # counting on the meta device: nothing to initialise
        if cfg.init == "vocab":
            init_from_tokens(model, prefix)
        else:
            for p in (prefix.kv, prefix.embedding):
                if p is not None:
                    nn.init.normal_(p, std=cfg.init_std)
    prefix.requires_grad_(True)
    return prefix
