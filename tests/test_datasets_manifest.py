"""Every preprocess function writes manifest.json last; the manifest catches changed files."""

import hashlib
import json
import os

import pytest
import torch

from rnn_core.datasets import io
from rnn_core.datasets.ag_news import preprocess_ag_news
from rnn_core.datasets.corpus import preprocess_corpus
from rnn_core.datasets.manifest import MANIFEST, DatasetManifest, ManifestError
from rnn_core.datasets.metro import preprocess_metro

AG_ROWS = '"3","Wall St. Bears","Short-sellers are back"\n"2","Phelps wins","He said great"\n'


def _metro(tmp_path, out):
    raw = tmp_path / "hz.pch"
    torch.save((torch.ones(2, 73, 80, 2), torch.zeros(1, 73, 80, 2)), raw)
    return preprocess_metro(raw, out)


def _corpus(tmp_path, out):
    raw = tmp_path / "m.txt"
    raw.write_text("Acte I.\nSGANARELLE.\nQue d'\u00e9loges!\n" * 3, encoding="utf-8")
    return preprocess_corpus("moliere", raw, out)


def _ag_news(tmp_path, out):
    (tmp_path / "train.csv").write_text(AG_ROWS)
    (tmp_path / "test.csv").write_text(AG_ROWS[:45] + "\n")
    return preprocess_ag_news(tmp_path / "train.csv", tmp_path / "test.csv", out,
                              train_variant="subset")


PREPROCESS = {"metro": _metro, "moliere": _corpus, "ag_news": _ag_news}
FILES = {
    "metro": ["meta.json", "test.parquet", "train.parquet"],
    "moliere": ["meta.json", "test.parquet", "train.parquet", "vocab.json"],
    "ag_news": ["meta.json", "test.parquet", "train.parquet", "vocab.json"],
}


@pytest.mark.parametrize("name", list(PREPROCESS))
def test_manifest_lists_every_output_and_is_written_last(tmp_path, monkeypatch, name):
    renamed = []  # every atomic write ends in os.replace(tmp, final)
    real_replace = os.replace
    monkeypatch.setattr(io.os, "replace",
                        lambda src, dst: (renamed.append(os.path.basename(dst)),
                                          real_replace(src, dst))[1])
    out = tmp_path / "out"
    manifest = PREPROCESS[name](tmp_path, out)
    monkeypatch.undo()
    assert renamed[-1] == MANIFEST and sorted(renamed[:-1]) == FILES[name]
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES[name], MANIFEST])
    assert manifest.dataset == name and manifest.folder == str(out.resolve())
    assert sorted(manifest.files) == FILES[name]
    for file, record in manifest.files.items():
        data = (out / file).read_bytes()
        assert record.bytes == len(data) and record.sha256 == hashlib.sha256(data).hexdigest()
    on_disk = DatasetManifest.read(out)
    assert on_disk == manifest and on_disk.to_json() == json.loads((out / MANIFEST).read_text())
    on_disk.verify()
    assert manifest.rows == {s: manifest.summary[s]["rows"] for s in ("train", "test")}
    assert manifest.vocab_size == manifest.summary.get("vocab_size")
    assert manifest.variant == ("subset" if name == "ag_news" else "full")


def test_verify_names_a_truncated_or_edited_file(tmp_path):
    out = tmp_path / "out"
    _metro(tmp_path, out)
    manifest = DatasetManifest.read(out)
    train = out / "train.parquet"
    data = train.read_bytes()
    train.write_bytes(data[:-10])
    with pytest.raises(ManifestError, match=r"train.parquet: has \d+ bytes, the manifest"):
        manifest.verify()
    manifest.verify(["test.parquet"])  # only what is asked for
    train.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    with pytest.raises(ManifestError, match="train.parquet: sha256 differs"):
        manifest.verify()
    manifest.verify(checksum=False)  # sizes only
    train.unlink()
    with pytest.raises(ManifestError, match="train.parquet: prepared file not found"):
        manifest.verify()


def test_missing_or_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        DatasetManifest.read(tmp_path)
    (tmp_path / MANIFEST).write_text('{"dataset": "metro"}')
    with pytest.raises(ManifestError, match="unreadable manifest"):
        DatasetManifest.read(tmp_path)
    (tmp_path / MANIFEST).write_text("{trunc")
    with pytest.raises(ManifestError, match="unreadable manifest"):
        DatasetManifest.read(tmp_path)
