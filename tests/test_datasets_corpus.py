"""Character corpora: strict UTF-8, Trump/Molière cleaners, contiguous split that adds up."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rnn_core.datasets.corpus import (
    CORPUS_SCHEMA,
    TRUMP_CHARS,
    clean_moliere,
    clean_trump,
    load_corpus,
    preprocess_corpus,
    read_corpus,
)
from rnn_core.datasets.io import DataFormatError

TRUMP = (
    "Thank you \u0096 thank you. [applause] It\u0092s great\u0085 really\u0097believe me.\n"
    "We\u2019ll win \u00bd of it, caf\u00e9 and \u0093jobs\u0094\u2603.\r\n"
    "Short speech.\n"
)
MOLIERE = "SGANARELLE.\r\n\r\nQue d'\u00e9loges! \u00abC\u0153ur\u00bb\nFin."


def test_read_corpus_names_line_and_byte(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok line\nsecond \xff line\n")
    with pytest.raises(DataFormatError, match=r"bad.txt:2: not UTF-8 at byte offset 15"):
        read_corpus(path)
    path.write_bytes(b"a\r\nb")
    assert read_corpus(path) == "a\r\nb"  # no newline translation on read


def test_clean_trump_maps_instead_of_dropping():
    text, report = clean_trump(TRUMP)
    assert set(text) <= TRUMP_CHARS
    assert text.splitlines()[0] == (
        "Thank you - thank you. [applause] It's great... really--believe me."
    )
    assert text.splitlines()[1] == 'We\'ll win 1/2 of it, cafe and "jobs".'
    assert text.count("\n") == 3 and "\r" not in text  # speeches stay one per line
    assert report["mapped"]["U+0096 -> '-'"] == 1 and report["mapped"]["U+0097 -> '--'"] == 1
    assert report["accents"] == 1 and report["dropped"] == {"U+2603": 1}  # the snowman
    assert report["crlf"] == 1


def test_clean_moliere_keeps_characters():
    text, report = clean_moliere(MOLIERE)
    assert text == "SGANARELLE.\n\nQue d'\u00e9loges! \u00abC\u0153ur\u00bb\nFin."
    assert report["crlf"] == 2 and report["nfc_changed"] is False
    decomposed, report = clean_moliere("e\u0301")  # e + combining acute -> é
    assert decomposed == "\u00e9" and report["nfc_length_change"] == -1


@pytest.mark.parametrize("name, raw", [("trump", TRUMP), ("moliere", MOLIERE)])
def test_split_is_contiguous_and_adds_up(tmp_path, name, raw):
    path = tmp_path / f"{name}.txt"
    path.write_text(raw, encoding="utf-8", newline="")
    manifest = preprocess_corpus(name, path, tmp_path / "out", train_fraction=0.7)
    meta = manifest.summary
    assert manifest.rows == {s: meta[s]["rows"] for s in ("train", "test")}
    assert manifest.vocab_size == meta["vocab_size"] and manifest.variant == "full"
    cleaned = {"trump": clean_trump, "moliere": clean_moliere}[name](raw)[0]
    train, test, chars = load_corpus(tmp_path / "out")
    assert train + test == cleaned and len(train) == int(len(cleaned) * 0.7)
    assert meta["train"]["chars"] + meta["test"]["chars"] == meta["clean_chars"] == len(cleaned)
    assert chars == sorted(set(cleaned)) and meta["vocab_size"] == len(chars)
    for split in ("train", "test"):
        table = pq.read_table(tmp_path / "out" / f"{split}.parquet")
        assert table.schema.equals(CORPUS_SCHEMA)
        rows = table.column("text").to_pylist()
        assert all(r.endswith("\n") for r in rows[:-1])  # one row per line
    first_test_offset = pq.read_table(tmp_path / "out" / "test.parquet")["offset"][0].as_py()
    assert first_test_offset == len(train)


def test_failed_run_keeps_previous_output(tmp_path):
    good = tmp_path / "trump.txt"
    good.write_text(TRUMP, encoding="utf-8")
    out = tmp_path / "out"
    preprocess_corpus("trump", good, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "broken.txt"
    bad.write_bytes(TRUMP.encode() + b"\x96 latin-1 byte\n")
    with pytest.raises(DataFormatError, match=r"broken.txt:4: not UTF-8"):
        preprocess_corpus("trump", bad, out)
    with pytest.raises(ValueError, match="unknown corpus"):
        preprocess_corpus("shakespeare", good, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_detects_gaps_and_foreign_vocab(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("abc\ndef\nghi\n" * 5, encoding="utf-8")
    out = tmp_path / "out"
    preprocess_corpus("moliere", path, out)
    table = pq.read_table(out / "train.parquet")
    pq.write_table(table.slice(1), out / "train.parquet")  # first row lost
    with pytest.raises(DataFormatError, match=r"train.parquet: row 0: offset 4, expected 0"):
        load_corpus(out)
    pq.write_table(table, out / "train.parquet")
    (out / "vocab.json").write_text(json.dumps({"chars": ["a"], "size": 1}))
    with pytest.raises(DataFormatError, match="vocab.json: misses characters"):
        load_corpus(out)


def _mirror(relative: str) -> Path:
    path = Path(os.environ.get("RNN_DATA_MIRROR", "/work/shared/datasets")) / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.slow
def test_real_moliere(tmp_path):
    meta = preprocess_corpus("moliere", _mirror("moliere/moliere.txt"), tmp_path).summary
    assert meta["raw_chars"] == meta["clean_chars"] == 1_687_290
    assert meta["train"]["chars"] + meta["test"]["chars"] == 1_687_290
    train, test, chars = load_corpus(tmp_path)
    assert len(train) + len(test) == 1_687_290 and len(chars) == 85
    assert "\u0153" in chars and "\u00ab" in chars


@pytest.mark.slow
def test_real_trump(tmp_path):
    meta = preprocess_corpus("trump", _mirror("trump/trump_full_speech.txt"), tmp_path).summary
    train, test, chars = load_corpus(tmp_path)
    assert len(train) + len(test) == meta["clean_chars"]
    assert set(chars) <= TRUMP_CHARS and (train + test).count("\n") == 74  # one per speech
    assert meta["cleaning"]["mapped"]["U+0096 -> '-'"] == 1_031
    assert (train + test).count("[applause]") == 1_068
