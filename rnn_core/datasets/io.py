"""Atomic writers, checked readers and the error type shared by every dataset module.

Why atomic: a preprocess step that fails half-way (bad input, full disk, Ctrl-C) must never leave a
truncated Parquet file where a good one used to be, because the next cached run would read it.
Every output is written to a temporary file in the *same* folder (so `os.replace` is a rename on
one filesystem, atomic on POSIX) and only then moved over the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class DataFormatError(ValueError):
    """Input that does not match what a reader expects; the message names the file (and line)."""

    def __init__(self, path: Path | str, message: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {message}")


def _write_bytes_atomic(path: Path, write) -> Path:
    """Call `write(fileobj)` on a temp file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "xb") instead of mkstemp: the file gets the usual umask permissions, not 0600.
    tmp_name = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp_name, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave the previous good file as it was and do not litter the folder.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


# Names of temp files a killed write leaves behind: `_write_bytes_atomic`'s `.<name>.<uuid hex>.tmp`
# and the fetcher's `.<name>.<mkstemp suffix>.part` (rnn_core.datasets.sources._temp_beside).
PARTIAL_WRITE = re.compile(r"\..+\.(?:[0-9a-f]{32}\.tmp|[a-z0-9_]{8}\.part)")
# A temp file younger than this may belong to a write still in progress (another prepare on the
# same folder): its writer renames it away within seconds, and deleting it would crash that run.
PARTIAL_WRITE_MIN_AGE_S = 60.0


def remove_partial_writes(folder: Path, min_age_s: float = PARTIAL_WRITE_MIN_AGE_S) -> list[Path]:
    """Delete the temp files that killed writes left under `folder` (recursively); returns them.

    A write that is killed (SIGKILL, power loss) never reaches its cleanup, so its temp file
    stays. Nothing reads those files, but they pile up at full size, one per killed run. Only
    names our writers make are touched, and only when older than `min_age_s`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cutoff = time.time() - min_age_s
    removed = []
    for path in sorted(folder.rglob(".*")):
        if not PARTIAL_WRITE.fullmatch(path.name) or not path.is_file() or path.is_symlink():
            continue
        try:
            if path.stat().st_mtime <= cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            pass
    return removed


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` (zstd) via a temp file + os.replace; returns `path`."""
    return _write_bytes_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))


def write_json_atomic(obj: Any, path: Path) -> Path:
    """Write `obj` as indented UTF-8 JSON via a temp file + os.replace; returns `path`."""
    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return _write_bytes_atomic(path, lambda f: f.write(data))


def read_json(path: Path) -> Any:
    """Read a JSON file written by `write_json_atomic`; a missing or broken file names itself."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(path, "file not found (run the preprocess step first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"not valid JSON: {err}") from None


def read_parquet_checked(path: Path, schema: pa.Schema) -> pa.Table:
    """Read a Parquet file and insist on exactly `schema` (names, order and types)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found (run the preprocess step first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataFormatError(path, f"not a readable Parquet file: {err}") from None
    if not table.schema.equals(schema, check_metadata=False):
        raise DataFormatError(path, f"schema {table.schema} differs from the expected {schema}")
    return table


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
