"""The trainable prefix of one model (PrefixTuning) and the hooks that insert it (methods/prefix.py
configures and applies it).

How, uniformly for the four families (no Cache objects, which BERT-like encoders and DeBERTa do not
take as prefixes): a pre-hook on `model.base_model` inserts `length` positions at the start of the
sequence (embeddings, attention mask, token types, position ids) and a hook on the sequence output
drops them again, so heads and losses see the original positions. PreEmbed fills those positions with
its trainable embeddings. PreLayer overwrites the inserted positions' key and value projections in
every block with its trainable activations, so they are exactly the prefix keys/values every real
token attends to; what the inserted positions compute themselves is never read. Consequences worth
knowing: real tokens sit after the prefix (absolute positions shift by l_p, as in Li & Liang's GPT-2
code, where the prefix is the past), and in DeBERTa-v2 the first block's convolution sees the inserted
positions' embedding output (a constant of the frozen model) next to the first real token.
Generation works: the first call inserts the prefix and it lives on in the KV cache; later calls only
extend the attention mask and position ids.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from lora_repro.errors import ConfigError
from lora_repro.hf_compat import cache_in, checkpointing_enabled


class PrefixTuning(nn.Module):
    """The trainable prefix of one model, and the hooks that insert it."""

    def __init__(
        self, length: int, d_model: int, n_layers: int = 0, d_kv: int = 0, reparam_hidden: int = 0
    ) -> None:
        super().__init__()
        self.length, self.d_model, self.n_layers, self.d_kv = length, d_model, n_layers, d_kv
        self.kv: nn.Parameter | None = None
        self.embedding: nn.Parameter | None = None
        self.mlp: nn.Sequential | None = None
        if n_layers == 0:  # PreEmbed
            self.embedding = nn.Parameter(torch.zeros(length, d_model))
        elif reparam_hidden:
            self.embedding = nn.Parameter(torch.zeros(length, d_model))
            self.mlp = nn.Sequential(
                nn.Linear(d_model, reparam_hidden),
                nn.Tanh(),
                nn.Linear(reparam_hidden, n_layers * 2 * d_kv),
            )
        else:
            self.kv = nn.Parameter(torch.zeros(n_layers, 2, length, d_kv))
        self.enabled = True
        self.max_positions: int | None = None  # absolute positions the model has (None: relative)
        self.inserted = 0  # positions inserted by the current forward (0 once cached in generation)
        self._last = (0, 0)  # (inserted, padded length) of the latest forward, for `top_hook`
        self._kv_now: torch.Tensor | None = None
        self._attn_input: dict[int, torch.Tensor] = {}
        self._capture: dict[tuple[int, int], torch.Tensor] | None = None
        self._handles: list[Any] = []

    @property
    def is_layer(self) -> bool:
        return self.n_layers > 0

    def activations(self) -> torch.Tensor:
        """Keys/values for every block: (n_layers, 2, length, d_kv)."""
        if self.kv is not None:
            return self.kv
        out = self.mlp(self.embedding)  # (length, n_layers * 2 * d_kv)
        return out.view(self.length, self.n_layers, 2, self.d_kv).permute(1, 2, 0, 3)

    def stored_count(self) -> tuple[int, int] | None:
        """(parameters that train, parameters kept) while the reparameterisation MLP trains in place
        of the activations; None without it. The paper's |Θ| counts what is kept (materialize)."""
        if self.mlp is None or self.embedding is None:
            return None
        training = self.embedding.numel() + sum(p.numel() for p in self.mlp.parameters())
        return training, self.n_layers * 2 * self.length * self.d_kv

    @torch.no_grad()
    def materialize(self) -> None:
        """Replace the reparameterisation MLP by the activations it produces (Li & Liang §4.3: after
        training only the prefix activations are kept)."""
        if self.mlp is None:
            return
        kv = self.activations().detach().clone()
        self.mlp, self.embedding = None, None
        self.kv = nn.Parameter(kv)

    # -- hooks ---------------------------------------------------------------------------------------
    def base_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Insert the prefix positions into the base model's inputs."""
        if args:  # top models call the base model with input_ids positional: name everything
            sig = inspect.signature(module.forward)
            named: dict[str, Any] = {}
            for key, value in sig.bind_partial(*args, **kwargs).arguments.items():
                if sig.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(value)
                else:
                    named[key] = value
            kwargs = named
        self.inserted, self._last = 0, (0, 0)
        if not self.enabled:
            return (), kwargs
        if self.is_layer and module.training and checkpointing_enabled(module):
            # Recomputation in backward runs after the forward has ended, when the hooks are idle.
            raise ConfigError("prefix_layer cannot train with gradient checkpointing; turn it off")
        p = self.length
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ConfigError("prefix tuning needs a 2-D attention mask (batch x tokens)")
        past = cache_in(kwargs)  # `cache` from transformers 5.24, `past_key_values` before
        pos = kwargs.get("position_ids")
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        done = past.get_seq_length() if past is not None else 0
        self._check_length(done + (ids if embeds is None else embeds).shape[1] + (0 if done else p))
        if done > 0:
            # Generation after the first step: the prefix already sits in the cache.
            if mask is not None:
                kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], p), mask], 1)
            if pos is not None:
                kwargs["position_ids"] = pos + p
            return (), kwargs
        if embeds is None:
            embeds = module.get_input_embeddings()(ids)
        b = embeds.shape[0]
        if self.is_layer:  # what the inserted positions hold is never read: zeros
            pre = embeds.new_zeros(b, p, embeds.shape[-1])
            self._kv_now = self.activations()
        else:
            pre = self.embedding.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)
        kwargs["input_ids"] = None
        kwargs["inputs_embeds"] = torch.cat([pre, embeds], 1)
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(b, p), mask], 1)
        types = kwargs.get("token_type_ids")
        if types is not None:
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(b, p), types], 1)
        if pos is not None:
            head = torch.arange(p, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], -1)
            kwargs["position_ids"] = torch.cat([head, pos + p], 1)
        self.inserted, self._last = p, (p, kwargs["inputs_embeds"].shape[1])
        return (), kwargs

    def _check_length(self, total: int) -> None:
        # Inserted positions shift real tokens by l_p: past the model's last absolute position the
        # embedding lookup fails (on a GPU as an opaque device-side assert that kills the process).
        if self.max_positions is not None and total > self.max_positions:
            raise ConfigError(
                f"prefix of {self.length} + {total - self.length} tokens = {total} positions exceeds "
                f"the model's {self.max_positions}; valid: at most {self.max_positions - self.length} "
                "tokens per sequence (task.max_length) or a shorter prefix (method.length)"
            )

    def sequence_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Drop the inserted positions from the per-position outputs."""
        p, self.inserted, self._kv_now = self.inserted, 0, None
        self._attn_input.clear()
        if not p:
            return output
        if isinstance(output, tuple):
            return (output[0][:, p:], *output[1:])
        output.last_hidden_state = output.last_hidden_state[:, p:]
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(h[:, p:] for h in output.hidden_states)
        return output

    def top_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Drop the inserted positions from hidden states that transformers records per layer
        (BERT-like models collect `output_hidden_states` with hooks of their own)."""
        p, n = self._last
        states = getattr(output, "hidden_states", None)
        if p and states is not None:
            output.hidden_states = tuple(h[:, p:] if h.shape[1] == n else h for h in states)
        return output

    def attn_pre_hook(self, layer: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # Remember this block's attention input: its projections of exactly this tensor are the keys
        # and values (DeBERTa also runs key_proj on relative-position embeddings, which stay untouched).
        self._attn_input[layer] = args[0] if args else kwargs["hidden_states"]

    def proj_hook(
        self, layer: int, pieces: list[tuple[int, int, int]], module: nn.Module, args: tuple, out
    ):
        """Overwrite the inserted positions' keys/values; `pieces` are (start, end, 0=k | 1=v)."""
        if args[0] is not self._attn_input.get(layer):
            return out
        if self._capture is not None:
            for start, end, j in pieces:
                self._capture[(layer, j)] = out[0, :, start:end].detach().clone()
            return out
        p = self.inserted
        if not p:
            return out
        b, kv = out.shape[0], self._kv_now[layer].to(out.dtype)
        head, cols, at = out[:, :p], [], 0
        for start, end, j in sorted(pieces):
            if at < start:
                cols.append(head[..., at:start])
            cols.append(kv[j].unsqueeze(0).expand(b, -1, -1))
            at = end
        if at < out.shape[-1]:
            cols.append(head[..., at:])
        return torch.cat([torch.cat(cols, -1), out[:, p:]], 1)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
