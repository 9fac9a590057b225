"""A synthetic task for trainer tests: no files, no tokenizer work, learnable in a few steps.

Classification: label 1 iff token 7 occurs in the sequence (a tiny model learns it quickly).
Regression: the target is the fraction of 7s. LM: predict a fixed completion after a random context.
`install()` makes it the builder for task.kind=glue, in this process (tests) or in a subprocess
(the kill/resume and DDP tests call it through `python -c`).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lora_repro.data import BUILDERS, TaskData

SIZES = {"train": 96, "dev": 40}


def _examples(n: int, seed: int, head: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(4, 12)
        ids = [rng.randint(10, 60) for _ in range(length)]
        if rng.random() < 0.5:
            ids[rng.randrange(length)] = 7
        ex = {"input_ids": [101, *ids, 102], "attention_mask": [1] * (length + 2)}
        if head == "lm":
            completion = [21, 22, 23, 24]
            ex["input_ids"] += completion
            ex["attention_mask"] += [1] * 4
            ex["labels"] = [-100] * (length + 2) + completion
        elif head == "regression":
            ex["labels"] = ids.count(7) / length
        else:
            ex["labels"] = int(7 in ids)
        out.append(ex)
    return out


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    width = max(len(ex["input_ids"]) for ex in batch)
    out = {}
    for key, fill in (("input_ids", 0), ("attention_mask", 0)):
        out[key] = torch.tensor([ex[key] + [fill] * (width - len(ex[key])) for ex in batch])
    first = batch[0]["labels"]
    if isinstance(first, list):
        out["labels"] = torch.tensor(
            [ex["labels"] + [-100] * (width - len(ex["labels"])) for ex in batch]
        )
    else:
        dtype = torch.float32 if isinstance(first, float) else torch.long
        out["labels"] = torch.tensor([ex["labels"] for ex in batch], dtype=dtype)
    return out


def accuracy(pred: Any, labels: Any) -> dict[str, float]:
    return {"accuracy": float((pred.argmax(-1) == labels).float().mean())}


def neg_mse(pred: Any, labels: Any) -> dict[str, float]:
    return {"neg_mse": -float(((pred.squeeze(-1) - labels) ** 2).mean())}


def build(cfg: Any, tokenizer: Any) -> TaskData:
    """cfg.name: toy (classification), toy_reg (one regression output) or toy_lm (language model)."""
    head = {"toy": "classification", "toy_reg": "regression", "toy_lm": "lm"}[cfg.name]
    train = _examples(cfg.train_limit or SIZES["train"], 0, head)
    dev = _examples(cfg.eval_limit or SIZES["dev"], 1, head)
    primary = {"classification": "dev/accuracy", "regression": "dev/neg_mse", "lm": "dev/loss"}
    primary = primary[head]
    return TaskData(
        name=cfg.name,
        version="toy-1",
        head="lm" if head == "lm" else "classification",
        num_labels=1 if head == "regression" else 2,
        primary_metric=primary,
        train=train,
        evals={"dev": dev},
        collate=collate,
        metrics={"classification": accuracy, "regression": neg_mse, "lm": None}[head],
    )


def install() -> None:
    BUILDERS["glue"] = __name__


def config(runs_dir: Any, *overrides: str, task: str = "toy") -> Any:
    """A RunConfig composed from conf/ like the CLI does: the smoke preset on the toy task."""
    from omegaconf import OmegaConf

    from lora_repro.compose import compose
    from lora_repro.config import RunConfig

    base = [
        "experiment=smoke",
        f"task.name={task}",
        f"runs_dir={runs_dir}",
        "train.eval_every=null",
    ]
    base += ["task.train_limit=null", "task.eval_limit=null", "logging.log_every=1"]
    return RunConfig.from_dict(OmegaConf.to_container(compose([*base, *overrides]), resolve=True))


SUBPROCESS = (
    "import sys; sys.path.insert(0, {tests!r}); import toytask; toytask.install(); "
    "from lora_repro.cli import main; sys.exit(main(sys.argv[1:]))"
)
