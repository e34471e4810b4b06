"""The tokenizer as transformers configures it, kept on disk by the model's tokenizer files: loading it through
transformers imports torch (about 5 s of CPU on 2 cores, paid by every run's driver before this cache), while the
tokenizers library reads the stored backend in milliseconds. No ray or vllm imports."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import structlog
from tokenizers import Tokenizer as HFTokenizer

log = structlog.get_logger(__name__)

CACHE_ENV = "EMBEDPIPE_TOKENIZER_CACHE"
"""Directory of the cache; unset: $XDG_CACHE_HOME/embedpipe/tokenizers (~/.cache/...); "off" disables it."""
SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack", ".ckpt")
MAX_HASHED_BYTES = 64 * 2**20
"""Files of a model directory larger than this are weights or data, not the tokenizer's."""


def cache_dir() -> Path | None:
    setting = os.environ.get(CACHE_ENV)
    if setting == "off":
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "embedpipe" / "tokenizers"


def cache_key(model_dir: Path, trust_remote_code: bool) -> str:
    """Everything transformers reads to build the tokenizer: every small file at the top of the model directory
    (tokenizer.json, its config, special tokens, vocabularies, any remote code), and the versions of transformers
    and tokenizers, which decide how those files are applied."""
    digest = hashlib.sha256(f"{_version('transformers')}|{_version('tokenizers')}|{trust_remote_code}".encode())
    for file in sorted(model_dir.iterdir()):
        if file.is_file() and file.suffix not in SKIPPED_SUFFIXES and file.stat().st_size <= MAX_HASHED_BYTES:
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def cached_backend(key: str) -> HFTokenizer | None:
    folder = cache_dir()
    if folder is None or not (folder / f"{key}.json").is_file():
        return None
    try:
        return HFTokenizer.from_file(str(folder / f"{key}.json"))
    except Exception as exc:  # noqa: BLE001 - a damaged entry is a miss; the tokenizer is loaded again
        log.debug("tokenizer_cache_unreadable", key=key, error=str(exc))
        return None


def keep_backend(key: str, backend: HFTokenizer) -> None:
    """Store the backend; a cache that cannot be written (a read-only home in a pod) only costs the next run time."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f"{key}.{os.getpid()}.part"
        part.write_text(backend.to_str())
        part.replace(folder / f"{key}.json")  # atomic: a reader sees the whole file or none
    except OSError as exc:
        log.debug("tokenizer_cache_unwritable", folder=str(folder), error=str(exc))


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"
