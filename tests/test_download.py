"""Fetching raw data against a real HTTP server on 127.0.0.1 (and a local mirror folder).

The server serves a temporary folder laid out like the mirror (`<dataset>/<file>`), and can be
told to misbehave on the next request for a path: answer 503 or 404, or send a body shorter
than its Content-Length (a connection cut mid-download).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import socket
import tarfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from rnn_core.datasets.sources import (
    Checksum,
    ChecksumMismatchError,
    DatasetSpec,
    FileSpec,
    PermanentFetchError,
    Source,
    SourcesFileError,
    TransientFetchError,
    fetch,
    fetch_dataset,
    is_transient,
    load_sources,
)

SHARED_MIRROR = Path("/work/shared/datasets")
CLASSES = b"World\nSports\nBusiness\nSci/Tech\n"
TEST_CSV = b"".join(b'"%d","Title %d","Some description, quoted ""here""."\n' % (i % 4 + 1, i)
                    for i in range(400))


class MirrorServer:
    """http.server in a thread; `misbehave[path]` is a queue of faults for the next requests."""

    def __init__(self, root: Path):
        self.root, self.requests, self.misbehave = root, [], {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                fault = (server.misbehave.get(self.path) or [None]).pop(0)
                file = server.root / self.path.lstrip("/")
                if fault in (503, 404):
                    self.send_error(fault)
                elif not file.is_file():
                    self.send_error(404)
                else:
                    body = file.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    # "truncate": promise the whole body, send half, hang up.
                    self.wfile.write(body[: len(body) // 2] if fault == "truncate" else body)
                    if fault == "truncate":
                        self.close_connection = True

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror_root(tmp_path):
    root = tmp_path / "mirror"
    (root / "ag_news").mkdir(parents=True)
    (root / "ag_news" / "classes.txt").write_bytes(CLASSES)
    (root / "ag_news" / "test.csv").write_bytes(TEST_CSV)
    (root / "ag_news" / "train_subset.csv").write_bytes(TEST_CSV[:2000])
    return root


@pytest.fixture
def server(mirror_root):
    srv = MirrorServer(mirror_root)
    yield srv
    srv.close()


@pytest.fixture
def raw_dir(tmp_path):
    return tmp_path / "raw"


def spec_for(name: str, data: bytes, dataset: str = "ag_news", **kw) -> FileSpec:
    digest = Checksum("sha256", hashlib.sha256(data).hexdigest())
    return FileSpec(dataset=dataset, name=name, checksums=(digest,), size=len(data), **kw)


def files_under(folder: Path) -> list[str]:
    """Every file below `folder`, hidden temp files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_http_mirror_fetches_and_verifies(server, raw_dir):
    path = fetch(spec_for("test.csv", TEST_CSV), raw_dir, mirror=server.url)
    assert path == raw_dir / "ag_news" / "test.csv"
    assert path.read_bytes() == TEST_CSV
    assert server.requests == ["/ag_news/test.csv"]
    assert files_under(raw_dir) == ["ag_news/test.csv"]


def test_present_and_verified_file_is_not_requested(server, raw_dir):
    (raw_dir / "ag_news").mkdir(parents=True)
    (raw_dir / "ag_news" / "classes.txt").write_bytes(CLASSES)
    fetch(spec_for("classes.txt", CLASSES), raw_dir, mirror=server.url)
    assert server.requests == []


def test_present_but_corrupt_file_is_fetched_again(server, raw_dir):
    (raw_dir / "ag_news").mkdir(parents=True)
    (raw_dir / "ag_news" / "classes.txt").write_bytes(b"World\nSports\nBusiness\nSci/Tec\n\n")
    path = fetch(spec_for("classes.txt", CLASSES), raw_dir, mirror=server.url)
    assert path.read_bytes() == CLASSES and len(server.requests) == 1


def test_truncated_body_is_transient_and_leaves_nothing(server, raw_dir):
    server.misbehave["/ag_news/test.csv"] = ["truncate"]
    spec = spec_for("test.csv", TEST_CSV)
    with pytest.raises(TransientFetchError) as info:
        fetch(spec, raw_dir, mirror=server.url)
    assert "ag_news/test.csv" in str(info.value) and server.url in str(info.value)
    assert "ChunkedEncodingError" in str(info.value)  # requests' name for a short body
    assert files_under(raw_dir) == []
    # The fault was one-off: trying again (what the task's retry does) succeeds.
    assert fetch(spec, raw_dir, mirror=server.url).read_bytes() == TEST_CSV


def test_503_is_retried_then_succeeds(server, raw_dir):
    server.misbehave["/ag_news/test.csv"] = [503]
    spec = spec_for("test.csv", TEST_CSV)
    with pytest.raises(TransientFetchError) as info:
        fetch(spec, raw_dir, mirror=server.url)
    assert "HTTP 503" in str(info.value)
    assert is_transient(info.value)  # the download task's retry condition says retry
    assert fetch(spec, raw_dir, mirror=server.url).read_bytes() == TEST_CSV
    assert server.requests == ["/ag_news/test.csv"] * 2


def test_404_is_permanent_and_requested_once(server, raw_dir):
    spec = spec_for("missing.csv", b"x")
    with pytest.raises(PermanentFetchError) as info:
        fetch(spec, raw_dir, mirror=server.url)
    assert "HTTP 404" in str(info.value) and f"{server.url}/ag_news/missing.csv" in str(info.value)
    assert not is_transient(info.value)
    assert server.requests == ["/ag_news/missing.csv"]


def test_wrong_checksum_is_permanent_and_leaves_nothing(server, raw_dir):
    spec = replace(spec_for("test.csv", TEST_CSV), checksums=(Checksum("sha256", "0" * 64),))
    with pytest.raises(PermanentFetchError) as info:
        fetch(spec, raw_dir, mirror=server.url)
    assert isinstance(info.value.attempts[0], ChecksumMismatchError)
    assert "ag_news/test.csv" in str(info.value) and "sha256" in str(info.value)
    assert not is_transient(info.value)
    assert files_under(raw_dir) == []


def closed_port_url(path: str) -> str:
    """A URL on 127.0.0.1 where nothing listens: connection refused, a transient failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_checksum_mismatch_is_permanent_even_when_upstream_is_unreachable(server, raw_dir,
                                                                         mirror_root):
    """Offline, the upstream URLs always fail transiently; a bad mirror copy must not turn into
    retries (they would fetch the same wrong bytes): it fails at once, naming the mirror copy."""
    (mirror_root / "ag_news" / "classes.txt").write_bytes(b"World\nSports\nBusiness\nSci/Tec\n\n")
    spec = spec_for("classes.txt", CLASSES, sources=(Source(closed_port_url("/classes.txt")),))
    with pytest.raises(PermanentFetchError) as info:
        fetch(spec, raw_dir, mirror=server.url)
    kinds = [type(a) for a in info.value.attempts]
    assert kinds == [ChecksumMismatchError, TransientFetchError]  # mirror, then upstream
    assert not is_transient(info.value)
    assert "sha256" in str(info.value) and "ConnectionError" in str(info.value)
    assert files_under(raw_dir) == []
    # Still transient, and retried, when no source served wrong bytes.
    server.misbehave["/ag_news/classes.txt"] = [503]
    (mirror_root / "ag_news" / "classes.txt").write_bytes(CLASSES)
    with pytest.raises(TransientFetchError) as info:
        fetch(spec, raw_dir, mirror=server.url)
    assert is_transient(info.value)


def test_failed_download_leaves_the_existing_file_as_it_was(server, raw_dir, mirror_root):
    """Only a verified copy may take the final name; a bad one never overwrites anything."""
    (mirror_root / "ag_news" / "classes.txt").write_bytes(b"tampered\n")
    existing = raw_dir / "ag_news" / "classes.txt"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"older copy")
    with pytest.raises(PermanentFetchError, match="size is 9 bytes"):
        fetch(spec_for("classes.txt", CLASSES), raw_dir, mirror=server.url)
    assert existing.read_bytes() == b"older copy"
    assert files_under(raw_dir) == ["ag_news/classes.txt"]


def test_mirror_failure_falls_through_to_upstream(server, raw_dir):
    server.misbehave["/ag_news/test.csv"] = [503]
    spec = spec_for("test.csv", TEST_CSV, sources=(Source(f"{server.url}/ag_news/test.csv"),))
    assert fetch(spec, raw_dir, mirror=server.url).read_bytes() == TEST_CSV
    assert len(server.requests) == 2


def _zip_with(path: Path, members: dict[str, bytes], symlink: str | None = None) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16  # a symlink's Unix mode
            zf.writestr(info, "/etc/passwd")


def test_zip_member_is_extracted_and_verified(server, raw_dir, mirror_root):
    _zip_with(mirror_root / "course.zip", {"data/hello.txt": b"hello\n", "data/other": b"x"})
    spec = spec_for("hello.txt", b"hello\n", dataset="trump",
                    sources=(Source(f"{server.url}/course.zip", member="data/hello.txt"),))
    path = fetch(spec, raw_dir, mirror="")
    assert path.read_bytes() == b"hello\n"
    assert files_under(raw_dir) == ["trump/hello.txt"]  # the archive itself is not kept


@pytest.mark.parametrize("hostile", ["../evil", "/abs/evil", "symlink"])
def test_hostile_zip_is_rejected(server, raw_dir, mirror_root, hostile):
    if hostile == "symlink":
        _zip_with(mirror_root / "bad.zip", {}, symlink="data/hello.txt")
    else:
        _zip_with(mirror_root / "bad.zip", {"data/hello.txt": b"hello\n", hostile: b"pwned"})
    spec = spec_for("hello.txt", b"hello\n", dataset="trump",
                    sources=(Source(f"{server.url}/bad.zip", member="data/hello.txt"),))
    with pytest.raises(PermanentFetchError, match="unsafe|not a regular file"):
        fetch(spec, raw_dir, mirror="")
    assert files_under(raw_dir) == []
    assert not (raw_dir.parent / "evil").exists()


def test_tar_gz_member_is_extracted(server, raw_dir, mirror_root):
    with tarfile.open(mirror_root / "ag.tgz", "w:gz") as tf:
        info = tarfile.TarInfo("ag_news_csv/classes.txt")
        info.size = len(CLASSES)
        tf.addfile(info, io.BytesIO(CLASSES))
    spec = spec_for("classes.txt", CLASSES,
                    sources=(Source(f"{server.url}/ag.tgz", member="ag_news_csv/classes.txt"),))
    assert fetch(spec, raw_dir, mirror="").read_bytes() == CLASSES


def test_local_folder_mirror(mirror_root, raw_dir):
    path = fetch(spec_for("classes.txt", CLASSES), raw_dir, mirror=str(mirror_root))
    assert path.read_bytes() == CLASSES
    with pytest.raises(PermanentFetchError, match="not in the mirror folder"):
        fetch(spec_for("absent.txt", b"x"), raw_dir, mirror=str(mirror_root))


def test_mirror_defaults_to_environment(mirror_root, raw_dir, monkeypatch):
    monkeypatch.setenv("RNN_DATA_MIRROR", str(mirror_root))
    assert fetch(spec_for("classes.txt", CLASSES), raw_dir).read_bytes() == CLASSES


def test_subset_fallback_warns_loudly(server, raw_dir, caplog):
    subset = TEST_CSV[:2000]
    dataset = DatasetSpec("ag_news", "", (
        spec_for("train.csv", b"the full split", fallback="train_subset.csv", rows=120000),
        spec_for("train_subset.csv", subset, variant="subset", rows=41342),
        spec_for("classes.txt", CLASSES),
    ))
    with caplog.at_level(logging.WARNING, logger="rnn_core"):
        got = fetch_dataset(dataset, raw_dir, mirror=server.url)
    assert got.variant == "subset"
    assert got.files["train.csv"] == raw_dir / "ag_news" / "train_subset.csv"
    assert got.files["train.csv"].read_bytes() == subset
    assert got.checksums["train.csv"] == str(dataset.file("train_subset.csv").checksums[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("41,342-row subset" in w and "train.csv" in w for w in warnings)
    assert "41,342" in got.notes[0]


def test_full_train_is_preferred_when_available(server, raw_dir, mirror_root):
    (mirror_root / "ag_news" / "train.csv").write_bytes(TEST_CSV)
    dataset = DatasetSpec("ag_news", "", (
        spec_for("train.csv", TEST_CSV, fallback="train_subset.csv"),
        spec_for("train_subset.csv", TEST_CSV[:2000], variant="subset"),
    ))
    got = fetch_dataset(dataset, raw_dir, mirror=server.url)
    assert got.variant == "full" and got.notes == []
    assert files_under(raw_dir) == ["ag_news/train.csv"]  # the subset is never fetched


def test_project_sources_file_is_valid():
    sources = load_sources()
    assert list(sources) == ["metro", "trump", "moliere", "ag_news"]
    ag = sources["ag_news"]
    assert [f.name for f in ag.primary_files()] == ["train.csv", "test.csv", "classes.txt"]
    assert ag.file("train.csv").checksums[0].algorithm == "md5"  # only md5 is published
    assert ag.file("train_subset.csv").variant == "subset"
    assert sources["metro"].files[0].sources[0].member == "data/hzdataset.pch"


@pytest.mark.skipif(not SHARED_MIRROR.is_dir(), reason="shared dataset mirror not on this machine")
def test_project_sources_match_the_shared_mirror(raw_dir):
    """Every mirrored file verifies against sources.toml (upstream URLs are never contacted)."""
    for dataset in load_sources().values():
        offline = replace(dataset, files=tuple(replace(f, sources=()) for f in dataset.files))
        got = fetch_dataset(offline, raw_dir, mirror=SHARED_MIRROR)
        assert all(p.is_file() for p in got.files.values())
        assert got.variant == ("subset" if dataset.name == "ag_news" else "full")


@pytest.mark.parametrize("bad, message", [
    ('[x]\nfiles = [{ name = "a", sha256 = "00" }]', "64 lower-case hex"),
    ('[x]\nfiles = [{ name = "a", md5 = "' + "0" * 32 + '", typo = 1 }]', "unknown keys"),
    ('[x]\nfiles = [{ name = "../a", md5 = "' + "0" * 32 + '" }]', "plain file name"),
    ('[x]\nfiles = [{ name = "a", md5 = "' + "0" * 32 + '", sources = '
     '[{ url = "https://h/z.zip", member = "../../etc/passwd" }] }]', "unsafe archive member"),
    ('[x]\nfiles = [{ name = "a", md5 = "' + "0" * 32 + '", fallback = "b" }]', "fallback"),
])
def test_malformed_sources_file_names_file_and_entry(tmp_path, bad, message):
    path = tmp_path / "sources.toml"
    path.write_text(bad)
    with pytest.raises(SourcesFileError, match=message) as info:
        load_sources(path)
    assert str(path) in str(info.value) and "[x]" in str(info.value)


def test_no_source_at_all_is_permanent(raw_dir):
    with pytest.raises(PermanentFetchError, match="no mirror set"):
        fetch(spec_for("classes.txt", CLASSES), raw_dir, mirror="")
    assert not os.path.exists(raw_dir / "ag_news" / "classes.txt")


def test_mirror_only_never_contacts_upstream(server, raw_dir):
    spec = spec_for("test.csv", TEST_CSV, sources=(Source(f"{server.url}/ag_news/test.csv"),))
    with pytest.raises(PermanentFetchError, match="no upstream source allowed"):
        fetch(spec, raw_dir, mirror="", upstream=False)
    assert server.requests == []
