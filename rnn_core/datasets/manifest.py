"""What the data stage hands to training: one manifest per prepared dataset.

    manifest = DatasetManifest.read(Path("data/processed/ag_news"))
    manifest.path("train.parquet")        # absolute Path of a file the prepare step wrote
    manifest.verify(["train.parquet"])    # exists, same size and sha256 as when it was written
    manifest.rows["train"], manifest.vocab_size, manifest.variant

`prepare_data` writes `<processed>/<dataset>/manifest.json` last (after every file it lists), and
returns the manifests as plain dicts (`to_json`), which is what experiments receive: they read
files through `path()` instead of a path convention, and `verify` lets a worker on another
machine fail clearly, naming the file, when it cannot see the prepared data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rnn_core.datasets.io import DataFormatError, sha256_file, write_json_atomic

MANIFEST = "manifest.json"


class ManifestError(DataFormatError):
    """A prepared file is missing or differs from what its manifest recorded."""


@dataclass(frozen=True)
class FileRecord:
    """One file written by the prepare step."""

    path: str  # absolute
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        path = Path(path).resolve()
        return cls(str(path), path.stat().st_size, sha256_file(path))

    def check(self, checksum: bool = True) -> None:
        """Raise ManifestError naming the file when it is gone or changed since it was written."""
        path = Path(self.path)
        if not path.is_file():
            raise ManifestError(path, "prepared file not found (run `rnnflow prepare`, or share "
                                      "the data folder with this worker)")
        size = path.stat().st_size
        if size != self.bytes:
            raise ManifestError(path, f"has {size} bytes, the manifest recorded {self.bytes}: "
                                      "changed or truncated since it was prepared")
        if checksum and sha256_file(path) != self.sha256:
            raise ManifestError(path, "sha256 differs from the manifest: changed since prepared")


@dataclass
class DatasetManifest:
    """Files, rows, vocabulary size and provenance of one prepared dataset."""

    dataset: str  # metro | trump | moliere | ag_news
    variant: str  # full | subset (AG News' mirror fallback)
    folder: str  # absolute processed/<dataset> folder
    files: dict[str, FileRecord]  # file name -> record, e.g. "train.parquet"
    rows: dict[str, int]  # split -> rows
    vocab_size: int | None = None
    notes: list[str] = field(default_factory=list)  # e.g. why a subset is used
    summary: dict[str, Any] = field(default_factory=dict)  # the preprocess step's meta

    @classmethod
    def build(cls, dataset: str, variant: str, folder: Path, names: list[str],
              rows: dict[str, int], vocab_size: int | None = None,
              notes: list[str] | None = None, summary: dict | None = None) -> DatasetManifest:
        folder = Path(folder).resolve()
        files = {name: FileRecord.of(folder / name) for name in names}
        return cls(dataset, variant, str(folder), files, dict(rows), vocab_size,
                   list(notes or []), dict(summary or {}))

    def path(self, name: str) -> Path:
        if name not in self.files:
            raise KeyError(f"{self.dataset}: no prepared file {name!r} in the manifest; it has "
                           f"{sorted(self.files)}")
        return Path(self.files[name].path)

    def verify(self, names: list[str] | None = None, checksum: bool = True) -> None:
        """Check the named files (default: all) against their records; raises ManifestError."""
        for name in names if names is not None else list(self.files):
            if name not in self.files:
                raise ManifestError(Path(self.folder) / name, "not listed in the manifest")
            self.files[name].check(checksum)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any] | DatasetManifest) -> DatasetManifest:
        if isinstance(obj, DatasetManifest):
            return obj
        values = dict(obj)
        values["files"] = {k: v if isinstance(v, FileRecord) else FileRecord(**v)
                           for k, v in values["files"].items()}
        return cls(**values)

    def write(self) -> Path:
        return write_json_atomic(self.to_json(), Path(self.folder) / MANIFEST)

    @classmethod
    def read(cls, folder: Path) -> DatasetManifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ManifestError(path, "no manifest: the dataset has not been prepared here")
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError) as err:
            raise ManifestError(path, f"unreadable manifest ({err})") from None


def as_manifests(manifests: dict[str, Any]) -> dict[str, DatasetManifest]:
    """{dataset: manifest dict or DatasetManifest} -> {dataset: DatasetManifest}."""
    return {name: DatasetManifest.from_json(m) for name, m in manifests.items()}
