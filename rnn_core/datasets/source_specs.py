"""Typed view of sources.toml: datasets, their files, checksums and upstream sources.

Loading validates everything up front (unknown keys, malformed digests, unsafe archive member
names, dangling fallbacks) so a typo fails with the file and the entry named, before any
download starts. See rnn_core/datasets/sources.toml for the format.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rnn_core.datasets.archives import is_safe_member_name

# The project's own sources.toml: package data beside this module, so a wheel install (not only
# the repository checkout) knows where the datasets come from.
DEFAULT_SOURCES_FILE = Path(__file__).resolve().with_name("sources.toml")

# Digest lengths in hex characters; the order is the order of preference.
HASH_HEX_LENGTH = {"sha256": 64, "md5": 32}
FILE_KEYS = {"name", "size", "sources", "fallback", "variant", "rows", *HASH_HEX_LENGTH}


class SourcesFileError(ValueError):
    """sources.toml is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256" or "md5"
    hexdigest: str  # lower-case hex

    def __str__(self) -> str:  # the "alg:hex" form pooch and the cache keys use
        return f"{self.algorithm}:{self.hexdigest}"


@dataclass(frozen=True)
class Source:
    url: str  # http(s) URL, or a local path for a mirror folder
    member: str | None = None  # path inside a .zip/.tar.gz at `url`; None: `url` is the file


@dataclass(frozen=True)
class FileSpec:
    dataset: str
    name: str  # saved as <raw_dir>/<dataset>/<name>
    checksums: tuple[Checksum, ...]  # all must match; sha256 first when there is one
    sources: tuple[Source, ...] = ()  # upstream, tried in order after the mirror
    size: int | None = None  # bytes, when known
    variant: str = "full"  # "subset" for a stand-in
    rows: int | None = None  # data rows, when known
    fallback: str | None = None  # name of the stand-in used when this file cannot be had

    @property
    def file_id(self) -> str:
        return f"{self.dataset}/{self.name}"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    files: tuple[FileSpec, ...]

    def file(self, name: str) -> FileSpec:
        for spec in self.files:
            if spec.name == name:
                return spec
        raise KeyError(f"dataset {self.name!r} has no file {name!r}")

    def primary_files(self) -> tuple[FileSpec, ...]:
        """Files fetched in their own right: every file that is not another's fallback."""
        stand_ins = {f.fallback for f in self.files if f.fallback}
        return tuple(f for f in self.files if f.name not in stand_ins)


def load_sources(path: str | os.PathLike = DEFAULT_SOURCES_FILE) -> dict[str, DatasetSpec]:
    """Read and validate sources.toml; returns dataset name -> DatasetSpec, in file order."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise SourcesFileError(f"{path}: cannot read: {err}") from err
    datasets = {}
    for name, table in raw.items():
        where = f"{path}: [{name}]"
        if not isinstance(table, dict) or not isinstance(table.get("files"), list):
            raise SourcesFileError(f"{where}: expected a table with a [[{name}.files]] list")
        if unknown := set(table) - {"description", "files"}:
            raise SourcesFileError(f"{where}: unknown keys {sorted(unknown)}")
        files = tuple(_file_spec(name, entry, f"{where}.files[{i}]")
                      for i, entry in enumerate(table["files"]))
        if not files:
            raise SourcesFileError(f"{where}: no files")
        _check_names_and_fallbacks(files, where)
        datasets[name] = DatasetSpec(name, str(table.get("description", "")), files)
    if not datasets:
        raise SourcesFileError(f"{path}: no datasets")
    return datasets


def _file_spec(dataset: str, entry: object, where: str) -> FileSpec:
    if not isinstance(entry, dict):
        raise SourcesFileError(f"{where}: expected a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise SourcesFileError(f"{where}: 'name' must be a plain file name, got {name!r}")
    where = f"{where} ({name})"
    if unknown := set(entry) - FILE_KEYS:
        raise SourcesFileError(f"{where}: unknown keys {sorted(unknown)}")
    checksums = []
    for alg, length in HASH_HEX_LENGTH.items():
        if alg in entry:
            digest = entry[alg]
            if not isinstance(digest, str) or not re.fullmatch(f"[0-9a-f]{{{length}}}", digest):
                raise SourcesFileError(f"{where}: {alg} must be {length} lower-case hex digits")
            checksums.append(Checksum(alg, digest))
    if not checksums:
        raise SourcesFileError(f"{where}: needs a sha256 or md5")
    for key in ("size", "rows"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise SourcesFileError(f"{where}: {key} must be a non-negative integer")
    sources = tuple(_source(s, f"{where}.sources[{i}]")
                    for i, s in enumerate(entry.get("sources", [])))
    return FileSpec(dataset=dataset, name=name, checksums=tuple(checksums), sources=sources,
                    size=entry.get("size"), variant=str(entry.get("variant", "full")),
                    rows=entry.get("rows"), fallback=entry.get("fallback"))


def _source(entry: object, where: str) -> Source:
    if not isinstance(entry, dict) or set(entry) - {"url", "member"}:
        raise SourcesFileError(f"{where}: expected {{ url = \"...\", member = \"...\" }}")
    url, member = entry.get("url"), entry.get("member")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SourcesFileError(f"{where}: url must be http(s), got {url!r}")
    if member is not None and (not isinstance(member, str) or not is_safe_member_name(member)):
        raise SourcesFileError(f"{where}: unsafe archive member {member!r}")
    return Source(url, member)


def _check_names_and_fallbacks(files: tuple[FileSpec, ...], where: str) -> None:
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise SourcesFileError(f"{where}: duplicate file names in {names}")
    by_name = {f.name: f for f in files}
    for spec in files:
        if spec.fallback is None:
            continue
        stand_in = by_name.get(spec.fallback)
        if stand_in is None or stand_in is spec or stand_in.fallback is not None:
            raise SourcesFileError(f"{where} ({spec.name}): fallback {spec.fallback!r} must name "
                                   "another file of the dataset that has no fallback itself")
