"""Character corpora (Trump speeches, Molière): strict reader, cleaners, contiguous split.

Processed layout (`out_dir`, e.g. `data/processed/trump`):
    train.parquet, test.parquet   CORPUS_SCHEMA: one row per line (the "\\n" kept at its end),
                                  `offset` = the row's character offset in the whole cleaned
                                  corpus; joining a split's rows gives exactly that split's text
    vocab.json                    {"chars": sorted characters, "size", "built_on"}
    meta.json                     source + sha256, char counts, cleaning report
    manifest.json                 written last: every file above with its size and sha256

The split is contiguous: train = the first `train_fraction` of the characters, test = the rest,
cut at an exact character offset (it may fall inside a line; that line then starts the test
split). The character vocabulary is built from the whole cleaned corpus: it is a closed set the
cleaner controls (ASCII for Trump, the file's 85 characters for Molière), so no `<unk>` is needed
and a test character can never be out of vocabulary.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow as pa

from rnn_core.datasets.io import (
    DataFormatError,
    read_json,
    read_parquet_checked,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
)
from rnn_core.datasets.manifest import DatasetManifest

CORPUS_SCHEMA = pa.schema([("text", pa.string()), ("offset", pa.int64())])
SPLITS = ("train", "test")


def read_corpus(path: Path) -> str:
    """Read a text file as strict UTF-8, without newline translation.

    A bad byte raises DataFormatError naming the file, the line and the byte offset.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataFormatError(
            path, f"not UTF-8 at byte offset {err.start} ({err.reason})", line=line
        ) from None


def _normalise_newlines(text: str, report: dict) -> str:
    report["crlf"] = text.count("\r\n")
    text = text.replace("\r\n", "\n")
    report["cr"] = text.count("\r")
    return text.replace("\r", "\n")


# Trump: ASCII letters, digits, punctuation, space, plus "\n" which separates speeches (one per
# line in the raw file): kept so a model sees where a speech ends, and so rows = speeches.
TRUMP_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation + " \n")
# Typography the course's ASCII filter would silently delete; U+0080-U+009F are cp1252 bytes
# that were decoded as latin-1 (U+0096 is an en dash, U+0085 an ellipsis ...).
_TRUMP_MAP = {
    "\u0085": "...", "\u0091": "'", "\u0092": "'", "\u0093": '"', "\u0094": '"',
    "\u0095": "*", "\u0096": "-", "\u0097": "--", "\u0098": "~", "\u0099": "(TM)",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2022": "*",
    "\u2013": "-", "\u2014": "--", "\u2026": "...", "\u00a0": " ", "\t": " ",
    "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4",
}  # fmt: skip


def _name(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def clean_trump(text: str) -> tuple[str, dict]:
    """Clean the Trump speeches to the course's ASCII alphabet -> (text, report).

    Line endings -> "\\n" (kept: one speech per line); cp1252-as-latin-1 controls and other
    typography mapped by `_TRUMP_MAP` (U+0096 -> "-", U+0097 -> "--", U+0085 -> "...", quotes
    -> ASCII); accented letters lose their accent (é -> e); anything still outside TRUMP_CHARS
    is dropped. Stage notes such as "[applause]" are kept (they are ASCII text of the file).
    report = {"crlf", "cr", "mapped": {"U+0096 -> '-'": n}, "accents": n, "dropped": {...}}.
    """
    report: dict = {}
    text = _normalise_newlines(text, report)
    mapped: Counter = Counter()
    accents = 0
    dropped: Counter = Counter()
    out = []
    for ch in text:
        if ch in TRUMP_CHARS:
            out.append(ch)
            continue
        if ch in _TRUMP_MAP:
            mapped[f"{_name(ch)} -> {_TRUMP_MAP[ch]!r}"] += 1
            out.append(_TRUMP_MAP[ch])
            continue
        # é -> e + combining accent -> e; keeps letters the ASCII filter would remove.
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        if base and all(c in TRUMP_CHARS for c in base):
            accents += 1
            out.append(base)
        else:
            dropped[_name(ch)] += 1
    report.update(mapped=dict(mapped), accents=accents, dropped=dict(dropped))
    return "".join(out), report


def clean_moliere(text: str) -> tuple[str, dict]:
    """Keep Molière's characters as they are: NFC and "\\n" line endings only -> (text, report).

    report = {"crlf", "cr", "nfc_changed": bool, "nfc_length_change": chars added (-removed)}.
    """
    report: dict = {}
    text = _normalise_newlines(text, report)
    nfc = unicodedata.normalize("NFC", text)
    report["nfc_changed"] = nfc != text
    report["nfc_length_change"] = len(nfc) - len(text)
    return nfc, report


CLEANERS = {"trump": clean_trump, "moliere": clean_moliere}


def _line_rows(text: str, start: int) -> pa.Table:
    """Rows = lines with their trailing "\\n"; `offset` counts from the corpus start.

    Splits on "\\n" only (str.splitlines would also split on U+0085, U+2028, form feeds...).
    """
    pieces = text.split("\n")
    lines = [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    offsets, pos = [], start
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    return pa.Table.from_arrays(
        [pa.array(lines, pa.string()), pa.array(offsets, pa.int64())], schema=CORPUS_SCHEMA
    )


def preprocess_corpus(
    name: str, raw_file: Path, out_dir: Path, train_fraction: float = 0.9,
    notes: list[str] | None = None,
) -> DatasetManifest:
    """Clean `raw_file` with the `name` cleaner ("trump" | "moliere"), split it contiguously and
    write train/test Parquet, vocab.json, meta.json and last manifest.json under `out_dir`.

    Returns the manifest; its `summary` is meta.json's dict, `notes` are kept in it.

    train = cleaned[: int(len * train_fraction)], test = the rest, so their lengths add up to
    the cleaned length. Nothing is written if reading or cleaning fails.
    """
    if name not in CLEANERS:
        raise ValueError(f"unknown corpus {name!r}; expected one of {sorted(CLEANERS)}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    raw_file, out_dir = Path(raw_file), Path(out_dir)
    raw = read_corpus(raw_file)
    text, report = CLEANERS[name](raw)
    if not text:
        raise DataFormatError(raw_file, "no text left after cleaning")
    cut = int(len(text) * train_fraction)
    tables = {"train": _line_rows(text[:cut], 0), "test": _line_rows(text[cut:], cut)}
    chars = sorted(set(text))
    vocab = {"chars": chars, "size": len(chars), "built_on": "whole cleaned corpus (closed set)"}
    meta = {
        "dataset": name,
        "source": {"file": raw_file.name, "sha256": sha256_file(raw_file)},
        "raw_chars": len(raw),
        "clean_chars": len(text),
        "train_fraction": train_fraction,
        "train": {"chars": cut, "rows": tables["train"].num_rows},
        "test": {"chars": len(text) - cut, "rows": tables["test"].num_rows},
        "vocab_size": len(chars),
        "cleaning": report,
    }
    for split, table in tables.items():
        write_parquet_atomic(table, out_dir / f"{split}.parquet")
    write_json_atomic(vocab, out_dir / "vocab.json")
    write_json_atomic(meta, out_dir / "meta.json")
    manifest = DatasetManifest.build(
        name, "full", out_dir, [*(f"{split}.parquet" for split in SPLITS), "vocab.json",
                                "meta.json"],
        rows={split: meta[split]["rows"] for split in SPLITS}, vocab_size=len(chars),
        notes=notes, summary=meta)
    manifest.write()  # last: a manifest only ever lists files that are already complete
    return manifest


def _read_split(path: Path, start: int) -> str:
    """Join a split's rows, checking that the offsets tile the text without gaps."""
    table = read_parquet_checked(path, CORPUS_SCHEMA)
    rows = table.column("text").to_pylist()
    offsets = table.column("offset").to_pylist()
    pos = start
    for i, (row, offset) in enumerate(zip(rows, offsets)):
        if offset != pos or row is None:
            raise DataFormatError(path, f"row {i}: offset {offset}, expected {pos}")
        pos += len(row)
    return "".join(rows)


def load_corpus(out_dir: Path) -> tuple[str, str, list[str]]:
    """Read back (train_text, test_text, chars) written by `preprocess_corpus`.

    Token id of a character = its index in `chars` (sorted by code point).
    """
    out_dir = Path(out_dir)
    chars = read_json(out_dir / "vocab.json")["chars"]
    train = _read_split(out_dir / "train.parquet", 0)
    test = _read_split(out_dir / "test.parquet", len(train))
    unknown = set(train).union(test).difference(chars)
    if unknown:
        raise DataFormatError(out_dir / "vocab.json", f"misses characters {sorted(unknown)}")
    return train, test, chars
