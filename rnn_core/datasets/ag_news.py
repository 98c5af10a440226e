"""AG News: strict CSV reader, text cleaning, word tokenizer, vocabulary and Parquet output.

Raw files: `"label","title","description"` rows, no header, labels 1-4 (World, Sports, Business,
Sci/Tech). Quirks handled by `clean_text` (see shared/datasets/README.md): a backslash stands for a
line break (never a `\\n` escape), and HTML entities lost their `&` (` #39;`, ` quot;`, ` amp;`).

Processed layout (`out_dir`, e.g. `data/processed/ag_news`):
    train.parquet, test.parquet   AG_NEWS_SCHEMA; label 0-3, title/description cleaned,
                                  text = title + " " + description, ids = vocab ids of text
    vocab.json                    {"tokens", "pad_id", "unk_id", "size", "built_on", ...}
    meta.json                     variant, rows, class counts, sources + sha256, unk rates,
                                  padding of train batches of 64: random vs length buckets
    manifest.json                 written last: every file above with its size and sha256
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from rnn_core.datasets.bucketing import (
    BucketBatchSampler,
    choose_boundaries,
    padding_fraction,
)
from rnn_core.datasets.io import (
    DataFormatError,
    read_json,
    read_parquet_checked,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
)
from rnn_core.datasets.manifest import DatasetManifest

PADDING_BATCH_SIZE = 64  # the batch size the padding figures in meta.json are measured at
PADDING_TARGET = 0.05  # what choose_boundaries aims for (share of padded slots per batch)
CLASS_NAMES = ("World", "Sports", "Business", "Sci/Tech")  # label 0..3 = classes.txt lines 1..4
FULL_TRAIN_ROWS = 120_000  # the published train.csv; the mirror's train_subset.csv has fewer
PAD, UNK = "<pad>", "<unk>"

AG_NEWS_SCHEMA = pa.schema(
    [
        ("label", pa.int8()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("text", pa.string()),
        ("title_ids", pa.list_(pa.int32())),
        ("ids", pa.list_(pa.int32())),
        ("title_length", pa.int32()),
        ("length", pa.int32()),
    ]
)

# ---------------------------------------------------------------- reading


def _decoded_lines(path: Path) -> Iterator[str]:
    """Yield the file's lines as str, failing on the first non-UTF-8 line with its number."""
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFormatError(
                    path, f"not UTF-8 at byte {offset + err.start} ({err.reason})", line=number
                ) from None
            offset += len(raw)


def read_ag_news_csv(path: Path) -> pd.DataFrame:
    """Read one AG News CSV strictly -> DataFrame(label int8 0-3, title str, description str).

    No header; exactly three fields per row (csv quoting, internal quotes doubled); label 1..4.
    Any violation raises DataFormatError naming the file and line. Text is returned uncleaned.
    """
    path = Path(path)
    labels: list[int] = []
    titles: list[str] = []
    descriptions: list[str] = []
    reader = csv.reader(_decoded_lines(path), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataFormatError(path, f"malformed CSV: {err}", line=reader.line_num) from None
        if len(row) != 3:
            raise DataFormatError(path, f"expected 3 fields, got {len(row)}", line=reader.line_num)
        if row[0] not in ("1", "2", "3", "4"):
            raise DataFormatError(path, f"label {row[0]!r} not in 1..4", line=reader.line_num)
        labels.append(int(row[0]) - 1)
        titles.append(row[1])
        descriptions.append(row[2])
    if not labels:
        raise DataFormatError(path, "no rows")
    return pd.DataFrame(
        {
            "label": np.asarray(labels, dtype=np.int8),
            "title": pd.array(titles, dtype="string"),
            "description": pd.array(descriptions, dtype="string"),
        }
    )


# ---------------------------------------------------------------- cleaning

# Entities whose "&" became a space (" #39;", "AT amp;T") or survived ("&lt;"). The prefix eats
# that one space or the "&"; at a word start no prefix is needed ("quot;Hello" after a quote).
_NAMED = {
    "quot": '"', "amp": "&", "lt": "<", "gt": ">", "apos": "'", "nbsp": " ", "hellip": "...",
    "lsquo": "'", "rsquo": "'", "ldquo": '"', "rdquo": '"', "mdash": "\u2014", "ndash": "-",
}  # fmt: skip
_ENTITY = re.compile(
    r"(?:&| |(?<!\S))(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|(" + "|".join(_NAMED) + r"));"
)
# Typographic characters folded to ASCII so "it’s" and "it's" share a token; the em dash stays
# (it is how the corpus writes a dash, README: #151; = em dash).
_TYPOGRAPHIC = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u00a0": " ",
     "\u2026": "..."}
)  # fmt: skip


def _entity_char(match: re.Match) -> str:
    dec, hexa, name = match.groups()
    if name:
        return _NAMED[name]
    code = int(dec) if dec else int(hexa, 16)
    if 128 <= code <= 159:  # cp1252 code points written as numeric entities (#151; = em dash)
        return bytes([code]).decode("cp1252", errors="replace").replace("\ufffd", "")
    if code < 32 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return " "
    return chr(code)


def clean_text(s: str) -> str:
    """Clean one AG News field: backslashes, broken HTML entities, whitespace.

    1. every backslash -> space (a backslash is a line break; "\\n" is a word starting with n);
    2. entities, repeated until nothing changes (some are escaped twice, "amp;quot;"):
       " #39;" -> "'", " #36;" -> "$", "quot;" -> '"', "#151;" -> em dash, "&lt;"/"&gt;"/
       "&amp;", any other numeric "#NNN;" (128-159 read as cp1252);
    3. curly quotes, en dash, ellipsis and no-break space -> ASCII;
    4. runs of whitespace -> one space; strip.
    """
    s = s.replace("\\", " ")
    for _ in range(4):  # each pass peels one level of escaping
        decoded = _ENTITY.sub(_entity_char, s)
        if decoded == s:
            break
        s = decoded
    s = s.translate(_TYPOGRAPHIC)
    return " ".join(s.split())


# ---------------------------------------------------------------- tokens and vocabulary

# Words keep inner apostrophes, dots and commas ("it's", "u.s", "1,000", "3.5"); every other
# non-space character is a token of its own.
_TOKEN = re.compile(r"\w+(?:['.,]\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercase and split into words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocab:
    """Token list with fixed specials: id 0 = `<pad>`, id 1 = `<unk>`, then by frequency."""

    tokens: list[str]
    pad_id: int = 0
    unk_id: int = 1
    built_on: str = ""
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.tokens[self.pad_id] != PAD or self.tokens[self.unk_id] != UNK:
            raise ValueError("vocabulary must start with <pad>, <unk>")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")
        object.__setattr__(self, "index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Tokens -> ids; unknown tokens map to `unk_id`."""
        get, unk = self.index.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def to_json(self) -> dict:
        return {
            "tokens": self.tokens,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "size": len(self.tokens),
            "built_on": self.built_on,
        }

    @classmethod
    def from_json(cls, obj: dict) -> Vocab:
        vocab = cls(obj["tokens"], obj["pad_id"], obj["unk_id"], obj.get("built_on", ""))
        if obj.get("size", len(vocab)) != len(vocab):
            raise ValueError(f"vocab.json says size {obj['size']} but lists {len(vocab)} tokens")
        return vocab


def build_vocab(token_lists: Iterable[list[str]], size: int = 20000, built_on: str = "") -> Vocab:
    """Vocabulary of at most `size` entries (specials included), most frequent tokens first.

    Ties are broken alphabetically so the same data always gives the same ids. Call it on the
    training split only; test tokens outside it become `<unk>`.
    """
    if size < 3:
        raise ValueError("size must leave room for <pad>, <unk> and one token")
    counts = Counter(t for tokens in token_lists for t in tokens)
    counts.pop(PAD, None)
    counts.pop(UNK, None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return Vocab([PAD, UNK] + [t for t, _ in ranked], built_on=built_on)


# ---------------------------------------------------------------- preprocessing


def _ids_column(id_lists: list[list[int]]) -> pa.ListArray:
    """List of id lists -> Arrow list<int32> without a Python-object round trip per element."""
    lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int32, count=len(id_lists))
    offsets = np.zeros(len(id_lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((i for ids in id_lists for i in ids), dtype=np.int32, count=offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _encode_split(df: pd.DataFrame) -> tuple[pd.DataFrame, list, list]:
    """Clean a raw split and tokenize it; ids are filled in once the vocabulary exists."""
    title = [clean_text(s) for s in df["title"]]
    description = [clean_text(s) for s in df["description"]]
    text = [" ".join(part for part in pair if part) for pair in zip(title, description)]
    clean = pd.DataFrame({"label": df["label"], "title": title, "description": description})
    clean["text"] = text
    return clean, [tokenize(t) for t in title], [tokenize(t) for t in text]


def _split_table(clean: pd.DataFrame, title_tokens: list, tokens: list, vocab: Vocab) -> pa.Table:
    title_ids = [vocab.encode(t) for t in title_tokens]
    ids = [vocab.encode(t) for t in tokens]
    columns = [
        pa.array(clean["label"].to_numpy(np.int8)),
        pa.array(clean["title"].tolist(), pa.string()),
        pa.array(clean["description"].tolist(), pa.string()),
        pa.array(clean["text"].tolist(), pa.string()),
        _ids_column(title_ids),
        _ids_column(ids),
        pa.array([len(t) for t in title_ids], pa.int32()),
        pa.array([len(t) for t in ids], pa.int32()),
    ]
    return pa.Table.from_arrays(columns, schema=AG_NEWS_SCHEMA)


def _split_stats(table: pa.Table, vocab: Vocab) -> dict:
    lengths = table.column("length").to_numpy()
    flat = table.column("ids").combine_chunks().flatten().to_numpy()
    return {
        "rows": table.num_rows,
        "class_counts": np.bincount(table.column("label").to_numpy(), minlength=4).tolist(),
        "tokens": int(lengths.sum()),
        "unk_rate": float((flat == vocab.unk_id).mean()) if flat.size else 0.0,
        "length_mean": float(lengths.mean()),
        "length_p95": int(np.percentile(lengths, 95)),
        "length_max": int(lengths.max()),
        "empty_rows": int((lengths == 0).sum()),
    }


def padding_summary(lengths, batch_size: int = PADDING_BATCH_SIZE,
                    max_padding: float = PADDING_TARGET, seed: int = 0) -> dict:
    """Share of padded slots over one epoch of batches drawn at random vs per length bucket.

    What length bucketing buys on this split, for the record (a few ms). Training chooses its
    own boundaries at its own batch size with `choose_boundaries`; nothing reads these back.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(lengths.size)
    random_batches = [order[i : i + batch_size] for i in range(0, lengths.size, batch_size)]
    boundaries = choose_boundaries(lengths, batch_size, max_padding=max_padding)
    buckets = BucketBatchSampler(lengths, batch_size, boundaries, shuffle=True, seed=seed)
    return {
        "batch_size": batch_size,
        "max_padding": max_padding,
        "random": padding_fraction(lengths, random_batches),
        "buckets": padding_fraction(lengths, buckets),
        "boundaries": boundaries,  # inclusive upper edges, ascending
    }


def preprocess_ag_news(
    train_csv: Path,
    test_csv: Path,
    out_dir: Path,
    vocab_size: int = 20000,
    train_variant: str = "full",
    notes: list[str] | None = None,
) -> DatasetManifest:
    """Read, clean, tokenize and write AG News under `out_dir`, manifest.json last.

    `train_variant` says which training file this is: "full" (the published 120,000-row
    train.csv; checked) or "subset" (the mirror's train_subset.csv; fewer rows, results must say
    so). The vocabulary is built on the training split only. Everything is read and validated
    before the first file is written, so bad input leaves earlier output untouched.
    Returns the manifest (variant = train_variant, summary = meta.json's dict); `notes` say why
    a subset is used (the download step's words; a default note when none is given).
    """
    train_csv, test_csv, out_dir = Path(train_csv), Path(test_csv), Path(out_dir)
    if train_variant not in ("full", "subset"):
        raise ValueError(f"train_variant must be 'full' or 'subset', got {train_variant!r}")
    raw = {"train": read_ag_news_csv(train_csv), "test": read_ag_news_csv(test_csv)}
    n_train = len(raw["train"])
    if (train_variant == "full") != (n_train == FULL_TRAIN_ROWS):
        raise DataFormatError(
            train_csv, f"{n_train} rows does not fit train_variant={train_variant!r} "
            f"(the full train.csv has {FULL_TRAIN_ROWS})"
        )  # fmt: skip
    overlap = len(
        set(zip(raw["train"]["title"], raw["train"]["description"]))
        & set(zip(raw["test"]["title"], raw["test"]["description"]))
    )
    encoded = {split: _encode_split(df) for split, df in raw.items()}
    vocab = build_vocab(encoded["train"][2], vocab_size, built_on=f"train ({train_csv.name})")
    tables = {split: _split_table(*encoded[split], vocab) for split in raw}
    meta = {
        "dataset": "ag_news",
        "train_variant": train_variant,
        "classes": list(CLASS_NAMES),
        "sources": {
            split: {"file": p.name, "sha256": sha256_file(p)}
            for split, p in (("train", train_csv), ("test", test_csv))
        },
        "vocab_size": len(vocab),
        "train_test_overlap": overlap,
        "tokenizer": "lowercase; \\w+(?:['.,]\\w+)* words, other non-space chars alone",
        **{split: _split_stats(table, vocab) for split, table in tables.items()},
        "padding": padding_summary(tables["train"].column("length").to_numpy()),
    }
    notes = list(notes or [])
    if train_variant == "subset" and not notes:
        notes.append(f"train is the {n_train:,}-row subset {train_csv.name}, not the full "
                     f"{FULL_TRAIN_ROWS:,}-row train.csv: results are on the subset")
    for split, table in tables.items():
        write_parquet_atomic(table, out_dir / f"{split}.parquet")
    write_json_atomic(vocab.to_json(), out_dir / "vocab.json")
    write_json_atomic(meta, out_dir / "meta.json")
    manifest = DatasetManifest.build(
        "ag_news", train_variant, out_dir,
        ["train.parquet", "test.parquet", "vocab.json", "meta.json"],
        rows={split: table.num_rows for split, table in tables.items()},
        vocab_size=len(vocab), notes=notes, summary=meta)
    manifest.write()  # last: a manifest only ever lists files that are already complete
    return manifest


def load_ag_news(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, Vocab]:
    """Read back (train_df, test_df, vocab) written by `preprocess_ag_news`.

    `ids` / `title_ids` cells are int32 numpy arrays. Ids beyond the vocabulary raise an error
    naming the file (a vocab.json from another run).
    """
    out_dir = Path(out_dir)
    vocab = Vocab.from_json(read_json(out_dir / "vocab.json"))
    frames = []
    for split in ("train", "test"):
        path = out_dir / f"{split}.parquet"
        table = read_parquet_checked(path, AG_NEWS_SCHEMA)
        flat = table.column("ids").combine_chunks().flatten().to_numpy()
        if flat.size and (flat.min() < 0 or flat.max() >= len(vocab)):
            raise DataFormatError(path, f"token id outside the {len(vocab)}-entry vocab.json")
        frames.append(table.to_pandas())
    return frames[0], frames[1], vocab
