"""The NLG task family as the trainer sees it: data/nlg.py's token-id pairs, plus the after-fit hook
that decodes `task.generate_split` with beam search (Table 11) and scores it (BLEU, NIST, METEOR,
ROUGE-L, CIDEr) with the best weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from lora_repro.data import TaskData
from lora_repro.data import nlg as nlg_data
from lora_repro.nlg.generate import run_generation


def build(cfg: Any, tokenizer: Any) -> TaskData:
    return with_decode(nlg_data.build(cfg, tokenizer), cfg, tokenizer)


def with_decode(data: TaskData, cfg: Any, tokenizer: Any) -> TaskData:
    """`data` with the decode-and-score hook of task config `cfg` attached."""

    def decode(model: nn.Module, folder: Path, batch_size: int) -> dict[str, float]:
        scores = run_generation(model, tokenizer, cfg, folder, batch_size, cfg.generate_metrics)
        return {f"{cfg.generate_split}/{k}": v for k, v in scores.items()}

    return dataclasses.replace(data, after_fit=decode)
