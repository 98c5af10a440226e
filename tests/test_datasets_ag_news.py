"""AG News: strict reader errors, cleaning quirks, vocabulary, Parquet output and real data."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rnn_core.datasets.ag_news import (
    AG_NEWS_SCHEMA,
    build_vocab,
    clean_text,
    load_ag_news,
    preprocess_ag_news,
    read_ag_news_csv,
    tokenize,
)
from rnn_core.datasets.bucketing import BucketBatchSampler, choose_boundaries, padding_fraction
from rnn_core.datasets.io import DataFormatError

TRAIN = (
    '"3","Wall St. Bears Claw Back","Reuters - Short-sellers, Wall Street #39;s dwindling\\band"\n'
    '"2","Phelps wins","He said  quot;great quot; \\\\ AT amp;T paid  #36;5"\n'
    '"3","Stocks ""rally""","Stocks rally again in the market"\n'
)
TEST = '"1","Zebra talks","Stocks and zebra news"\n"4","Tech","Wall Street tech"\n'


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture
def csvs(tmp_path) -> tuple[Path, Path]:
    return _write(tmp_path / "train.csv", TRAIN), _write(tmp_path / "test.csv", TEST)


def test_reader_maps_labels_and_doubled_quotes(csvs):
    df = read_ag_news_csv(csvs[0])
    assert df["label"].tolist() == [2, 1, 2] and df["label"].dtype == np.int8
    assert df["title"][2] == 'Stocks "rally"'
    assert df["description"][0].endswith("dwindling\\band")  # the reader does not clean


@pytest.mark.parametrize(
    "content, message, line",
    [
        ('"1","a","b"\n"2","only two"\n', "expected 3 fields, got 2", 2),
        ('"1","a","b"\n"3","a","b","c"\n', "expected 3 fields, got 4", 2),
        ('"1","a","b"\n"1","a","b"\n"5","a","b"\n', "label '5' not in 1..4", 3),
        ('"0","a","b"\n', "label '0' not in 1..4", 1),
        ('"1","a","b"\n\n"1","a","b"\n', "expected 3 fields, got 0", 2),
        ('"1","a "bad" quote","b"\n', "malformed CSV", 1),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, content, message, line):
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(DataFormatError, match=message) as err:
        read_ag_news_csv(path)
    assert err.value.line == line and str(err.value).startswith(f"{path}:{line}:")


def test_reader_rejects_non_utf8_with_line(tmp_path):
    path = _write(tmp_path / "latin1.csv", b'"1","a","b"\n"2","caf\xe9","b"\n')
    with pytest.raises(DataFormatError, match="not UTF-8 at byte 20") as err:
        read_ag_news_csv(path)
    assert err.value.line == 2 and str(path) in str(err.value)


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("social\\network \\\\ para", "social network para"),  # never a newline
        ("Street #39;s  #36;46 billion", "Street's $46 billion"),
        ("He said  quot;great quot; today", 'He said "great" today'),
        ("AT amp;T and Texas A amp;M", "AT&T and Texas A&M"),
        ("&lt;strong&gt;Opinion&lt;/strong&gt;", "<strong>Opinion</strong>"),
        ("again  #151; this time", "again \u2014 this time"),
        ("Western  amp;amp;amp; Southern", "Western & Southern"),  # escaped three times
        ("It #146;s  #147;big #148; #8230;", 'It\'s "big"...'),
        ("  padded\t field  ", "padded field"),
        ("ranked #1 in the world; yes", "ranked #1 in the world; yes"),  # not an entity
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_tokenize_words_and_punctuation():
    assert tokenize("Wall St. said it's up 3.5% to $1,000!") == [
        "wall", "st", ".", "said", "it's", "up", "3.5", "%", "to", "$", "1,000", "!",
    ]  # fmt: skip


def test_build_vocab_frequency_then_alphabetical():
    vocab = build_vocab([["b", "a", "c", "c"], ["a", "b", "d"]], size=5)
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c"]  # a, b, c tie at 2: alphabetical
    assert vocab.encode(["c", "d", "zz"]) == [4, 1, 1]
    assert build_vocab([["x"]]).tokens == ["<pad>", "<unk>", "x"]


def test_preprocess_schema_vocab_meta_and_round_trip(csvs, tmp_path):
    out = tmp_path / "out"
    manifest = preprocess_ag_news(*csvs, out, vocab_size=50, train_variant="subset")
    meta = manifest.summary
    assert manifest.variant == "subset" and "3-row subset train.csv" in manifest.notes[0]
    assert manifest.rows == {"train": 3, "test": 2} and manifest.vocab_size == meta["vocab_size"]
    table = pq.read_table(out / "train.parquet")
    assert table.schema.equals(AG_NEWS_SCHEMA)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["text"] == row["title"] + " " + row["description"]
    assert row["description"] == "Reuters - Short-sellers, Wall Street's dwindling band"
    assert row["length"] == len(row["ids"]) and row["title_length"] == len(row["title_ids"])
    assert row["ids"][: row["title_length"]] == row["title_ids"]
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["tokens"][:2] == ["<pad>", "<unk>"] and vocab["size"] == len(vocab["tokens"])
    assert "zebra" not in vocab["tokens"]  # test-only word: vocab is built on train only
    assert meta["train"]["rows"] == 3 and meta["test"]["class_counts"] == [1, 0, 0, 1]
    assert meta["train_variant"] == "subset" and len(meta["sources"]["train"]["sha256"]) == 64
    assert meta["test"]["unk_rate"] > 0 and meta["train"]["unk_rate"] == 0
    train, test, v = load_ag_news(out)
    assert len(train) == 3 and len(test) == 2 and len(v) == vocab["size"]
    assert v.encode(tokenize(test["text"][0]))[:2] == [1, 1]  # "zebra talks" unknown
    assert test["ids"][0].tolist() == v.encode(tokenize(test["text"][0]))


def test_failed_run_keeps_previous_output(csvs, tmp_path):
    out = tmp_path / "out"
    preprocess_ag_news(*csvs, out, train_variant="subset")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad_test = _write(tmp_path / "bad_test.csv", TEST + '"9","x","y"\n')
    with pytest.raises(DataFormatError, match=r"bad_test.csv:3: label '9'"):
        preprocess_ag_news(csvs[0], bad_test, out, train_variant="subset")
    with pytest.raises(DataFormatError, match="train.csv: 3 rows does not fit"):
        preprocess_ag_news(*csvs, out, train_variant="full")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _mirror(name: str) -> Path:
    path = Path(os.environ.get("RNN_DATA_MIRROR", "/work/shared/datasets")) / "ag_news" / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.slow
def test_real_mirror_files_and_bucket_padding(tmp_path):
    note = "train.csv could not be had, so ag_news/train_subset.csv was used instead"
    manifest = preprocess_ag_news(
        _mirror("train_subset.csv"), _mirror("test.csv"), tmp_path, train_variant="subset",
        notes=[note],
    )
    meta = manifest.summary
    assert manifest.notes == [note]  # the download step's words, not a default
    assert meta["train"]["rows"] == 41_342 and meta["test"]["rows"] == 7_600
    assert meta["train"]["class_counts"] == [10_268, 10_255, 10_381, 10_438]
    assert meta["test"]["class_counts"] == [1_900] * 4 and meta["train_test_overlap"] == 0
    assert meta["vocab_size"] == 20_000 and meta["train"]["empty_rows"] == 0
    train, test, vocab = load_ag_news(tmp_path)
    leftovers = r"#\d+;|quot;|\\"  # entities or backslashes that cleaning missed
    assert not train["text"].str.contains(leftovers).any()
    assert not test["text"].str.contains(leftovers).any()
    assert len(vocab) == 20_000 and (test["ids"].map(len) == test["length"]).all()
    # Padding of `ids` batches of 64: random batches vs length buckets (target <= 5%).
    lengths = train["length"].to_numpy()
    order = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [order[i : i + 64] for i in range(0, len(order), 64)]
    boundaries = choose_boundaries(lengths, 64, max_padding=0.05)
    bucketed = padding_fraction(lengths, BucketBatchSampler(lengths, 64, boundaries, seed=0))
    assert padding_fraction(lengths, random_batches) > 0.3 and bucketed <= 0.05
    # meta.json records the same figures (what `rnnflow prepare` prints).
    assert meta["padding"]["boundaries"] == boundaries and meta["padding"]["batch_size"] == 64
    assert meta["padding"]["buckets"] == pytest.approx(bucketed)
    assert meta["padding"]["random"] == pytest.approx(padding_fraction(lengths, random_batches))
