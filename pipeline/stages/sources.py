"""Find the shards the settings name. Uses pyarrow filesystems; no ray or vllm imports."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import pyarrow.fs as pafs

from pipeline.errors import ConfigError
from pipeline.object_store import S3Options
from pipeline.settings import InputSettings, revealed
from pipeline.stages.documents import Shard, shard_format

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Inputs:
    """A run's input files: their filesystem and the shards, sorted."""

    fs: pafs.FileSystem
    shards: list[Shard]

    @classmethod
    def listed(cls, cfg: InputSettings) -> Inputs:
        return cls(*list_shards(cfg))


def list_shards(cfg: InputSettings) -> tuple[pafs.FileSystem, list[Shard]]:
    """All files the inputs name, sorted; raises ConfigError for paths that do not exist or match nothing."""
    if not cfg.paths:
        msg = "input.paths is empty; name at least one file, directory or glob (--input.paths or [input] paths)"
        raise ConfigError(msg)
    filesystem: pafs.FileSystem | None = None
    shards: dict[str, Shard] = {}
    roots: set[str] = set()
    for spec in cfg.paths:
        fs, path, scheme = _filesystem(spec, revealed(cfg.storage_options))
        if filesystem is not None and fs.type_name != filesystem.type_name:
            msg = f"input.paths mixes filesystems ({filesystem.type_name} and {fs.type_name} for {spec!r})"
            raise ConfigError(msg)
        filesystem = fs
        for file_path, root in _expand(fs, path, spec):
            fmt = shard_format(file_path, cfg)
            if fmt is None:
                if root is None:
                    msg = (
                        f"input {spec!r}: cannot tell the format of {file_path!r} from its extension; "
                        f"set input.format to jsonl, parquet or text"
                    )
                    raise ConfigError(msg)
                continue
            relative = PurePosixPath(file_path).relative_to(root).as_posix() if root else PurePosixPath(file_path).name
            source = f"{scheme}://{file_path}" if scheme else file_path
            shards.setdefault(file_path, Shard(file_path, source, fmt, relative))
            if not scheme:
                roots.add(root or str(PurePosixPath(file_path).parent))
    if not shards:
        msg = f"input.paths {cfg.paths} matched no readable files (extensions: jsonl, parquet, {cfg.text_extensions})"
        raise ConfigError(msg)
    common = os.path.commonpath(roots) if roots else None
    return filesystem, [_as_given(shards[k], common) for k in sorted(shards)]


def _as_given(shard: Shard, local_root: str | None) -> Shard:
    """The shard with its `source` as readers should see it: an object store's URI as it is, a local file's path
    relative to the input root (the roots' common directory when several are named), never this machine's
    absolute path, which means nothing to a reader elsewhere and ends up in citations."""
    if local_root is None or "://" in shard.source:
        return shard
    return replace(shard, source=PurePosixPath(shard.path).relative_to(local_root).as_posix())


def _filesystem(spec: str, options: dict[str, str]) -> tuple[pafs.FileSystem, str, str | None]:
    if "://" in spec:
        scheme = spec.split("://", 1)[0]
        try:
            if scheme == "s3" and options:
                fs, path = pafs.S3FileSystem(**S3Options.from_options(options).pyarrow_kwargs()), spec[5:]
            else:
                fs, path = pafs.FileSystem.from_uri(spec.split("*", 1)[0] if _is_glob(spec) else spec)
        except (pafs.ArrowInvalid, OSError, ValueError) as exc:
            msg = f"input {spec!r}: cannot open its filesystem: {exc}"
            raise ConfigError(msg) from None
        if _is_glob(spec):
            path = spec.split("://", 1)[1]
        return fs, path, None if scheme == "file" else scheme
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(spec)), None


def _is_glob(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def _expand(fs: pafs.FileSystem, path: str, spec: str) -> list[tuple[str, str | None]]:
    """(file, root) pairs; root is None for a file named directly."""
    if _is_glob(path):
        parts = PurePosixPath(path).parts
        base_parts = []
        for part in parts:
            if _is_glob(part):
                break
            base_parts.append(part)
        base = str(PurePosixPath(*base_parts))
        pattern = path
        found = [
            (path, base)
            for path in _walk(fs, base)
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.replace("**/", ""))
        ]
        if not found:
            msg = f"input {spec!r}: the glob matches no files"
            raise ConfigError(msg)
        return found
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        msg = f"input {spec!r} does not exist; fix input.paths"
        raise ConfigError(msg)
    if info.type == pafs.FileType.Directory:
        return [(f, path) for f in _walk(fs, path)]
    return [(path, None)]


def _walk(fs: pafs.FileSystem, base: str) -> list[str]:
    """Files below `base`, hidden ones left out. Locally, entries that cannot be opened (dangling links) are
    listed too, so that reading them records a reject instead of their silently not being there."""
    if isinstance(fs, pafs.LocalFileSystem):
        found = []
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(os.path.join(root, f) for f in files if not f.startswith("."))
        return found
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (FileNotFoundError, OSError) as exc:
        msg = f"cannot list {base!r}: {exc}"
        raise ConfigError(msg) from None
    return [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and not any(p.startswith(".") for p in PurePosixPath(i.path).relative_to(base).parts)
    ]
