"""Shared fixtures: tiny models built from conf/model/tiny-*.yaml (real module names, random init)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
import torch
from omegaconf import OmegaConf

from lora_repro.compose import compose
from lora_repro.models import ModelConfig, load_model

# Derived-file caches (tokenised splits) go to a throw-away folder, never the user's ~/.cache; the
# subprocesses tests start inherit it.
os.environ.setdefault("LORA_REPRO_CACHE", tempfile.mkdtemp(prefix="lora-repro-test-cache-"))

TINY = ["tiny-roberta", "tiny-bert", "tiny-deberta-v2", "tiny-gpt2", "tiny-llama"]


def model_config(name: str) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(compose([f"model={name}"]))["model"])


def tiny_model(name: str, head: str = "classification", num_labels: int = 2, seed: int = 0):
    """A tiny model in eval mode (dropout off) with a fixed seed."""
    torch.manual_seed(seed)
    return load_model(model_config(name), head, num_labels).eval()


@pytest.fixture
def input_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(1000, 2000, (2, 9), generator=g)


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo"], capture_output=True, timeout=10).returncode == 0


def pytest_collection_modifyitems(config, items):
    """`slurm` tests skip when no Slurm answers (CI starts one with slurm/local-slurm.sh)."""
    if any("slurm" in item.keywords for item in items) and not _slurm_up():
        skip = pytest.mark.skip(reason="no Slurm: sinfo failed")
        for item in items:
            if "slurm" in item.keywords:
                item.add_marker(skip)
