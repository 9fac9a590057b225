"""How one run's processes share the model: DDP (a full copy per process, gradients all-reduced) or
FSDP2 (`torch.distributed.fsdp.fully_shard` over every transformer block, then the root: each process
holds 1/world of every weight, frozen base included, and gathers a block's weights only while it
computes). `train.strategy=ddp|fsdp`; the loop does not care which, except through this module.

FSDP's tensors are DTensor shards, so what leaves a process (checkpoints, adapter files) is gathered
here into full tensors on every rank (a collective: every rank calls it) and written by rank 0 in the
same single-file formats as without sharding. A checkpoint written by one strategy or process count
therefore resumes under any other.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from lora_repro.distributed import Runtime
from lora_repro.models import blocks


def wrap(model: nn.Module, strategy: str, rt: Runtime, family: str) -> nn.Module:
    """The module the loop calls: `model` itself (one process), DDP around it, or `model` sharded
    in place (FSDP2 keeps the module and its parameter names; its parameters become DTensors)."""
    if rt.world == 1:
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # The model was built on the CPU (build.make_model): sharding moves each rank's 1/world of every
    # weight to its device, so a base that does not fit one GPU never has to be there whole.
    mesh = init_device_mesh(rt.device.type, (rt.world,))
    for block in blocks(model, family):  # one all-gather per block: the unit of peak memory
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # embeddings, head and anything outside the blocks
    return model


def sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def no_sync(model: nn.Module, sync: bool) -> Any:
    """Skip the gradient reduction on micro-batches that are not the last of an optimizer step."""
    if sync:
        return contextlib.nullcontext()
    if sharded(model):
        return _fsdp_no_sync(model)
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: Any):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def resharded(model: nn.Module) -> nn.Module:
    """`model` with every FSDP unit back in its sharded state: the root keeps its weights gathered
    after a forward (FSDP2's default), and only sharded, its parameters are the optimizer's."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    return model


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor shard's full value (collective), a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full values of the trainable tensors on CPU. Under FSDP every rank must call it."""
    return {
        n: full(p.detach()).cpu().contiguous()
        for n, p in resharded(model).named_parameters()
        if p.requires_grad
    }


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into the trainable parameters: into each rank's shard under FSDP."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(resharded(model).named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            p = params[name]
            if isinstance(p, DTensor):
                value = distribute_tensor(value.to(p.dtype), p.device_mesh, p.placements)
                p.to_local().copy_(value.to_local())
            else:
                p.copy_(value)


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with full tensors, keyed by parameter name: loadable under any strategy
    and process count. Under FSDP every rank must call it (each shard is gathered)."""
    names = {id(p): n for n, p in resharded(model).named_parameters()}
    state, groups = {}, []
    for group in opt.param_groups:  # the same order on every rank: the gathers line up
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [names[id(p)] for p in group["params"]]})  # fmt: skip
        for p in group["params"]:
            if p in opt.state:
                state[names[id(p)]] = {
                    k: full(v).cpu() if torch.is_tensor(v) else v for k, v in opt.state[p].items()
                }
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of `optimizer_state`: each tensor onto its parameter's device (its shard, if sharded)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(resharded(model).named_parameters())
    on_device = {}  # param -> whether its group's kernel reads `step` on the parameter's device
    for group, old in zip(opt.param_groups, saved["param_groups"], strict=True):
        if [params[n] for n in old["params"]] != group["params"]:
            raise RuntimeError("checkpoint optimizer groups do not match the model's parameters")
        group.update({k: v for k, v in old.items() if k != "params"})
        on_device |= dict.fromkeys(
            group["params"], bool(group.get("fused") or group.get("capturable"))
        )
    for name, values in saved["state"].items():
        p = params[name]
        out = {}
        for k, v in values.items():
            if torch.is_tensor(v) and v.shape == p.shape and isinstance(p, DTensor):
                v = distribute_tensor(v.to(p.dtype), p.device_mesh, p.placements)
            elif torch.is_tensor(v) and v.dim() > 0:
                v = v.to(p.device)
            elif k == "step" and torch.is_tensor(v) and on_device[p]:
                # torch's own rule (Optimizer.load_state_dict): fused and capturable kernels take
                # `step` as float32 on the parameter's device, the others on the CPU. Left on the CPU,
                # a fused AdamW run on CUDA failed to resume ("state_steps is on cpu").
                v = v.to(device=p.device, dtype=torch.float32)
            out[k] = v
        opt.state[p] = out


class PortableOptimizer:
    """Restores a checkpoint's optimizer state whichever way it was written: by `optimizer_state`
    (parameter names: any strategy, any process count) or by `Optimizer.state_dict` (indices, the
    format of checkpoints written before sharding was supported)."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model, self.opt = model, opt

    def load_state_dict(self, state: dict[str, Any]) -> None:
        groups = state.get("param_groups") or [{}]
        if any(isinstance(p, str) for g in groups for p in g.get("params", [])):
            load_optimizer_state(self.model, self.opt, state)
        else:
            self.opt.load_state_dict(state)
