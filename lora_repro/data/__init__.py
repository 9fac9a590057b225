"""Tasks as the trainer sees them: tokenised splits, a collate function and a scorer.

Contract (every task family implements `build(cfg, tokenizer) -> TaskData`):
- `train` and each entry of `evals` are sequences of dicts of token-id lists (plus `labels`);
- `collate` pads a list of those dicts dynamically into a batch of tensors;
- classification tasks score with `metrics(predictions, labels) -> {name: value}`;
  language-modelling tasks (NLG) are evaluated by loss during training (`select_metric`) and decoded
  with the best weights afterwards by their `after_fit` hook, which gives their primary metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class TaskData:
    name: str
    version: str  # bumped whenever data handling or scoring changes (recorded in every result)
    head: str  # classification | lm
    num_labels: int  # 1 = regression (STS-B); ignored for lm
    primary_metric: str  # the record's headline number, `<split>/<metric>`
    train: Sequence[dict[str, Any]]
    evals: dict[str, Sequence[dict[str, Any]]]  # split name -> examples (MNLI has two)
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    metrics: Callable[[Any, Any], dict[str, float]] | None = None
    # The evaluation that picks the best epoch, when it is not the primary metric: NLG tasks select
    # by validation loss during training and report the beam-search decode's BLEU afterwards.
    select_metric: str | None = None
    # Run once after training on the best evaluation's weights: (model, run folder, batch size) ->
    # extra `<split>/<metric>` scores for the best evaluation (NLG: the beam-search decode's BLEU ...).
    after_fit: Callable[[Any, Any, int], dict[str, float]] | None = None

    @property
    def selected_by(self) -> str:
        return self.select_metric or self.primary_metric


# task.kind -> module with `build(cfg, tokenizer) -> TaskData`, imported on first use.
# NLG's builder lives with the decoder it hooks in after training (lora_repro/nlg/task.py).
BUILDERS: dict[str, str] = {"glue": "lora_repro.data.glue", "nlg": "lora_repro.nlg.task"}


def build_task(cfg: Any, tokenizer: Any) -> TaskData:
    """Dispatch on `cfg.kind` (a TaskConfig) to the task family's `build`."""
    import importlib

    return importlib.import_module(BUILDERS[cfg.kind]).build(cfg, tokenizer)


def fingerprint(cfg: Any) -> str | None:
    """A short hash of the data files a task reads (local sources), so a finished run is never
    reused on other data; hub sources name their dataset instead. None: nothing to read."""
    import hashlib

    if cfg.source == "hub":
        return f"hub:{cfg.name}"
    paths = sorted(_data_files(cfg))
    if not paths:
        return None
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + _file_hash(path).encode())
    return h.hexdigest()[:16]


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: planning re-asks


def _file_hash(path: Any) -> str:
    import hashlib

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _data_files(cfg: Any) -> list[Any]:
    from pathlib import Path

    if cfg.kind == "glue":
        from lora_repro.data.glue import split_files

        files = split_files(cfg)
    else:
        from lora_repro.data.nlg_sources import DEFAULT_FILES, split_path

        names = {**DEFAULT_FILES.get(cfg.name, {}), **(getattr(cfg, "files", None) or {})}
        files = [split_path(cfg, split) for split in names] if cfg.data_dir else []
    return [Path(f) for f in files if Path(f).is_file()]
