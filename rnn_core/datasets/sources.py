"""Where the raw data comes from (rnn_core/datasets/sources.toml), and fetching it safely.

`fetch` puts one verified file at `<raw_dir>/<dataset>/<name>`: it keeps a copy already there
when its checksum matches, otherwise tries the mirror ($RNN_DATA_MIRROR: a folder or a base URL,
laid out `<dataset>/<name>`) and then each upstream source in turn. Every copy is written to a
temporary name beside the target, checked, and only then moved into place with os.replace, so a
partial or wrong file never takes the final name. `fetch_dataset` does that for every file of a
dataset and falls back to a stand-in (AG News' 41,342-row train subset) when a file cannot be had.

Failures are split in two so that callers retry only what a retry can fix: TransientFetchError
(connection refused or reset, timeout, HTTP 5xx/429/408, a truncated body) and
PermanentFetchError (HTTP 404 and other 4xx, checksum mismatch, hostile archive, missing file).
A checksum mismatch from any source makes the whole fetch permanent: see `fetch`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pooch
import requests

from rnn_core.datasets.archives import UnsafeArchiveError, extract_member
from rnn_core.datasets.source_specs import (
    DEFAULT_SOURCES_FILE,
    Checksum,
    DatasetSpec,
    FileSpec,
    Source,
    SourcesFileError,
    load_sources,
)

log = logging.getLogger(__name__)

# Fail fast on an unreachable host (offline machines), but let a slow large body finish.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
# Progress bars only for files big enough to watch; unknown sizes (archives) get one too.
PROGRESS_MIN_BYTES = 5_000_000
# HTTP statuses worth retrying: the server is overloaded or asks us to slow down.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
MAX_ARCHIVE_MEMBER_BYTES = 2 << 30


class FetchError(RuntimeError):
    """A file could not be fetched; `file` is `<dataset>/<name>`, `url` the source tried."""

    def __init__(self, message: str, *, file: str, url: str | None = None,
                 attempts: tuple[FetchError, ...] = ()):
        self.file, self.url, self.reason, self.attempts = file, url, message, attempts
        where = f" from {url}" if url else ""
        super().__init__(f"{file}{where}: {message}")


class TransientFetchError(FetchError):
    """May succeed if tried again later (network trouble, overloaded server, cut-off body)."""


class PermanentFetchError(FetchError):
    """Will fail the same way again (missing file, 4xx, checksum mismatch, hostile archive)."""


class ChecksumMismatchError(PermanentFetchError):
    """The bytes are not the ones sources.toml describes."""


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may help: the retry condition for download tasks.

    Never when any source served bytes that fail their checksum (see `fetch`).
    """
    return isinstance(error, TransientFetchError) and not any(
        isinstance(a, ChecksumMismatchError) for a in error.attempts)


@dataclass(frozen=True)
class FetchedDataset:
    """What fetch_dataset put on disk for one dataset."""

    dataset: str
    files: dict[str, Path]  # name asked for in sources.toml -> file actually used
    checksums: dict[str, str]  # same keys -> "sha256:<hex>" (or "md5:<hex>") of that file
    variant: str = "full"  # "subset" when a stand-in replaced a file
    notes: list[str] = field(default_factory=list)  # human-readable fallbacks taken


def fetch_dataset(dataset: DatasetSpec, raw_dir: str | os.PathLike,
                  mirror: str | os.PathLike | None = None, *,
                  upstream: bool = True) -> FetchedDataset:
    """Fetch every file of `dataset`, using a file's fallback when the file cannot be had.

    `mirror` as in `fetch`; upstream=False never contacts the upstream URLs (mirror only).
    """
    files: dict[str, Path] = {}
    checksums: dict[str, str] = {}
    variant, notes = "full", []
    for spec in dataset.primary_files():
        used = spec
        try:
            path = fetch(spec, raw_dir, mirror, upstream=upstream)
        except FetchError as err:
            if spec.fallback is None:
                raise
            used = dataset.file(spec.fallback)
            path = fetch(used, raw_dir, mirror, upstream=upstream)
            rows = f"{used.rows:,}-row " if used.rows else ""
            full_rows = f" ({spec.rows:,} rows)" if spec.rows else ""
            note = (f"{spec.file_id} could not be had, so {used.file_id} was used instead: "
                    f"results are on the {rows}{used.variant}, not the full data{full_rows}")
            notes.append(note)
            log.warning("\n%s\nWARNING: %s.\nReason: %s\n%s", "!" * 78, note, err, "!" * 78)
        files[spec.name] = path
        checksums[spec.name] = str(used.checksums[0])
        if used.variant != "full":
            variant = used.variant
    return FetchedDataset(dataset.name, files, checksums, variant, notes)


def fetch(spec: FileSpec, raw_dir: str | os.PathLike, mirror: str | os.PathLike | None = None,
          *, upstream: bool = True, progress: bool | None = None) -> Path:
    """Return `<raw_dir>/<dataset>/<name>`, verified, fetching it first if needed.

    `mirror`: None reads $RNN_DATA_MIRROR; "" means no mirror. upstream=False: mirror only.
    `progress`: None shows a bar for large or unknown-size downloads. Raises TransientFetchError when any source failed in a way
    a retry may fix, else PermanentFetchError; the message lists every source tried and why.
    """
    target = Path(raw_dir) / spec.dataset / spec.name
    if target.exists():
        try:
            verify(target, spec, url=None)
            log.info("%s already present and verified: %s", spec.file_id, target)
            return target
        except ChecksumMismatchError as err:
            log.warning("%s is present but fails its checksum (%s); fetching it again",
                        target, err.reason)
    target.parent.mkdir(parents=True, exist_ok=True)
    failures: list[FetchError] = []
    for source in candidate_sources(spec, mirror, upstream):
        try:
            _fetch_from(spec, source, target, progress)
            log.info("fetched %s from %s", spec.file_id, source.url)
            return target
        except FetchError as err:
            log.info("could not fetch %s: %s", spec.file_id, err)
            failures.append(err)
    if not failures:
        raise PermanentFetchError("no mirror set (RNN_DATA_MIRROR) and no upstream source"
                                  + ("" if upstream else " allowed"), file=spec.file_id)
    # A source that served other bytes than sources.toml describes (a bad mirror copy, a wrong
    # checksum) needs a person, not a retry: that makes the failure permanent even when another
    # source only had a network hiccup (offline, the upstream URLs always fail that way).
    mismatch = any(isinstance(f, ChecksumMismatchError) for f in failures)
    kind = (TransientFetchError
            if not mismatch and any(isinstance(f, TransientFetchError) for f in failures)
            else PermanentFetchError)
    tried = "\n".join(f"  - {f.url}: {f.reason}" for f in failures)
    raise kind(f"no source gave a good copy; tried:\n{tried}", file=spec.file_id,
               attempts=tuple(failures))


def candidate_sources(spec: FileSpec, mirror: str | os.PathLike | None = None,
                      upstream: bool = True) -> list[Source]:
    """The mirror's copy (when a mirror is set) followed by the upstream sources, in order."""
    base = os.environ.get("RNN_DATA_MIRROR", "") if mirror is None else os.fspath(mirror)
    found: list[Source] = []
    if base and _is_http(base):
        found.append(Source(f"{base.rstrip('/')}/{quote(spec.dataset)}/{quote(spec.name)}"))
    elif base:
        folder = Path(base.removeprefix("file://")).expanduser().resolve()
        found.append(Source(str(folder / spec.dataset / spec.name)))
    return found + (list(spec.sources) if upstream else [])


def verify(path: Path, spec: FileSpec, *, url: str | None) -> None:
    """Raise ChecksumMismatchError unless `path` has every checksum (and the size) in `spec`."""
    if spec.size is not None and (size := path.stat().st_size) != spec.size:
        raise ChecksumMismatchError(f"size is {size:,} bytes, expected {spec.size:,}",
                                    file=spec.file_id, url=url)
    for expected in spec.checksums:
        actual = pooch.file_hash(str(path), alg=expected.algorithm)
        if actual != expected.hexdigest:
            raise ChecksumMismatchError(
                f"{expected.algorithm} is {actual}, expected {expected.hexdigest}",
                file=spec.file_id, url=url)


def _fetch_from(spec: FileSpec, source: Source, target: Path, progress: bool | None) -> None:
    """Get one copy from one source into a temp file beside `target`, verify, then rename."""
    with _temp_beside(target) as tmp:
        if source.member is None:
            _download_or_copy(spec, source.url, tmp, progress)
        else:
            with _temp_beside(target) as archive:
                _download_or_copy(spec, source.url, archive, progress, archive=True)
                limit = spec.size + 1 if spec.size is not None else MAX_ARCHIVE_MEMBER_BYTES
                try:
                    extract_member(archive, source.member, tmp, max_bytes=limit)
                except UnsafeArchiveError as err:
                    raise PermanentFetchError(f"member {source.member!r}: {err}",
                                              file=spec.file_id, url=source.url) from err
        verify(tmp, spec, url=source.url)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; raw data is meant to be readable
        os.replace(tmp, target)


def _download_or_copy(spec: FileSpec, url: str, dest: Path, progress: bool | None,
                      archive: bool = False) -> None:
    if not _is_http(url):
        try:
            shutil.copyfile(url, dest)
        except FileNotFoundError:
            raise PermanentFetchError("not in the mirror folder", file=spec.file_id,
                                      url=url) from None
        except OSError as err:
            raise PermanentFetchError(f"cannot read: {err}", file=spec.file_id, url=url) from err
        return
    if progress is None:
        progress = archive or spec.size is None or spec.size >= PROGRESS_MIN_BYTES
    downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=1 << 16,
                                      timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    try:
        downloader(url, str(dest), None)
    except requests.HTTPError as err:
        code = err.response.status_code if err.response is not None else 0
        reason = err.response.reason if err.response is not None else ""
        kind = TransientFetchError if code in TRANSIENT_HTTP else PermanentFetchError
        raise kind(f"HTTP {code} {reason}".strip(), file=spec.file_id, url=url) from err
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError) as err:
        # ChunkedEncodingError is what requests raises for a body shorter than Content-Length.
        raise TransientFetchError(f"{type(err).__name__}: {_short(err)}", file=spec.file_id,
                                  url=url) from err
    except requests.RequestException as err:
        raise PermanentFetchError(f"{type(err).__name__}: {_short(err)}", file=spec.file_id,
                                  url=url) from err


@contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    """A fresh hidden temp path in target's folder (same filesystem, so os.replace is atomic),
    removed on exit unless it was renamed away."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 300 else text[:300] + "..."


__all__ = [
    "DEFAULT_SOURCES_FILE",
    "Checksum",
    "ChecksumMismatchError",
    "DatasetSpec",
    "FetchError",
    "FetchedDataset",
    "FileSpec",
    "PermanentFetchError",
    "Source",
    "SourcesFileError",
    "TransientFetchError",
    "candidate_sources",
    "fetch",
    "fetch_dataset",
    "is_transient",
    "load_sources",
    "verify",
]
