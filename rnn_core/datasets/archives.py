"""Copy one named member out of a downloaded .zip or .tar(.gz) archive, safely.

Archives come from the internet, so nothing in them is trusted: we never call extractall, we
refuse an archive that names any member with an absolute path or a `..` part (a path-traversal
archive is hostile even if we would not extract that member), we copy only a regular file
(never a symlink, hard link or device), and we stop reading after `max_bytes` (a zip bomb).
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """The archive is malformed, hostile, or lacks the member asked for."""


def is_safe_member_name(name: str) -> bool:
    """True for a relative path with no `..` part, no drive letter and no backslash tricks."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    return bool(name) and not posix.startswith("/") and ":" not in posix and ".." not in parts


def extract_member(archive: Path, member: str, dest: Path, max_bytes: int) -> None:
    """Write the regular-file `member` of `archive` (zip or tar, any compression) to `dest`.

    Raises UnsafeArchiveError when the archive cannot be read, names an unsafe path anywhere,
    lacks `member`, the member is not a regular file, or it holds more than `max_bytes`.
    """
    if not is_safe_member_name(member):
        raise UnsafeArchiveError(f"refusing unsafe member name {member!r}")
    if zipfile.is_zipfile(archive):
        _extract_zip_member(archive, member, dest, max_bytes)
    elif tarfile.is_tarfile(archive):
        _extract_tar_member(archive, member, dest, max_bytes)
    else:
        raise UnsafeArchiveError(f"{archive.name} is neither a zip nor a tar archive")


def _refuse_unsafe_names(names: list[str]) -> None:
    bad = [n for n in names if not is_safe_member_name(n.rstrip("/"))]
    if bad:
        raise UnsafeArchiveError(f"archive holds unsafe member paths (path traversal): {bad[:3]}")


def _extract_zip_member(archive: Path, member: str, dest: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            _refuse_unsafe_names(zf.namelist())
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise UnsafeArchiveError(f"archive has no member {member!r}") from None
            # Unix mode bits live in the high 16 bits of external_attr; a file-type field of 0
            # means "not recorded" (Windows zips, zipfile.writestr), taken as a regular file.
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir() or file_type not in (0, stat.S_IFREG):
                raise UnsafeArchiveError(f"member {member!r} is not a regular file")
            with zf.open(info) as src:
                _copy_capped(src, dest, max_bytes, member)
    except (zipfile.BadZipFile, EOFError) as err:
        raise UnsafeArchiveError(f"corrupt zip archive: {err}") from err


def _extract_tar_member(archive: Path, member: str, dest: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            _refuse_unsafe_names([m.name for m in members])
            found = [m for m in members if m.name == member]
            if not found:
                raise UnsafeArchiveError(f"archive has no member {member!r}")
            info = found[-1]  # tar semantics: a later entry with the same name wins
            if not info.isreg():
                raise UnsafeArchiveError(f"member {member!r} is not a regular file")
            src = tf.extractfile(info)
            assert src is not None  # regular files always have a body
            with src:
                _copy_capped(src, dest, max_bytes, member)
    except (tarfile.TarError, EOFError) as err:
        raise UnsafeArchiveError(f"corrupt tar archive: {err}") from err


def _copy_capped(src, dest: Path, max_bytes: int, member: str) -> None:
    with open(dest, "wb") as out:
        shutil.copyfileobj(_Capped(src, max_bytes, member), out, length=1 << 20)


class _Capped:
    """A read-only file wrapper that raises once more than `limit` bytes have been read."""

    def __init__(self, raw, limit: int, member: str):
        self.raw, self.left, self.member = raw, limit, member

    def read(self, n: int = -1) -> bytes:
        # Read one byte past the limit so an over-long member is detected, not silently cut.
        chunk = self.raw.read(self.left + 1 if n < 0 else min(n, self.left + 1))
        self.left -= len(chunk)
        if self.left < 0:
            raise UnsafeArchiveError(f"member {self.member!r} is larger than expected")
        return chunk
