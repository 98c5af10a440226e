"""Integrity of logged models: the sha256 of every file, recorded when logged, checked before load.

At logging time (`record`) the model is read back from the store and every file of it hashed:
the list (`model_digests.json`, relative path -> sha256) is logged on the model's run, and the
sha256 of that list is set as a tag on the registered version (`rnnflow.model.sha256`). Before
inference loads a version (`verified_download`), the list must hash to the version's tag and
every downloaded file to its entry, with no file missing or added; anything else is refused with
an `IntegrityError` naming the files. The tag lives in the registry's database, the files in the
artifact store: changing a model's files (or the list beside them) without the database shows.

    local = verified_download(client, "rnnflow-ag-news-lstm8", "3", dst)   # raises on mismatch
    model = mlflow.pyfunc.load_model(str(local))                          # what was checked
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from tasks.tracking.names import MODEL_DIGEST_TAG, MODEL_DIGESTS_ARTIFACT

# Written by MLflow on the caller's side when it downloads a registered version: not the model's.
_CLIENT_SIDE = {"registered_model_meta"}


class IntegrityError(RuntimeError):
    """A model's files differ from the digests recorded when it was logged."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_tree(folder: str | Path) -> dict[str, str]:
    """Every file under `folder` (relative POSIX path -> sha256), sorted."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in _CLIENT_SIDE}


def manifest_bytes(files: dict[str, str]) -> bytes:
    """The canonical form of a digest list: what is logged and what its tag hashes."""
    return json.dumps({"algorithm": "sha256", "files": dict(sorted(files.items()))},
                      indent=1, sort_keys=True).encode("utf-8")


def record(client: MlflowClient, run_id: str, model_uri: str, name: str, version: str) -> str:
    """Hash the stored model at `model_uri`, log the list on `run_id`, tag the version with the
    list's sha256; returns that sha256."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        data = manifest_bytes(digest_tree(local))
        listing = Path(tmp) / MODEL_DIGESTS_ARTIFACT
        listing.write_bytes(data)
        client.log_artifact(run_id, str(listing))
    digest = hashlib.sha256(data).hexdigest()
    client.set_model_version_tag(name, version, MODEL_DIGEST_TAG, digest)
    return digest


def verified_download(client: MlflowClient, name: str, version: str, dst: str | Path) -> Path:
    """Download version `version` of `name` into `dst` and check it file by file; returns the
    local model folder (load that, not the store's copy)."""
    mv = client.get_model_version(name, str(version))
    where = f"{name} version {version}"
    expected = (mv.tags or {}).get(MODEL_DIGEST_TAG)
    if not expected:
        raise IntegrityError(f"{where} has no recorded digests ({MODEL_DIGEST_TAG} tag): it was "
                             "logged before integrity checks; re-register it or load it "
                             "without verification")
    dst = Path(dst)
    try:
        listing = Path(client.download_artifacts(mv.run_id, MODEL_DIGESTS_ARTIFACT, str(dst)))
    except Exception as err:  # noqa: BLE001  (any store error: the list is not there)
        raise IntegrityError(f"{where}: its digest list {MODEL_DIGESTS_ARTIFACT} cannot be read "
                             f"from run {mv.run_id} ({err})") from None
    data = listing.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise IntegrityError(f"{where}: {MODEL_DIGESTS_ARTIFACT} on run {mv.run_id} does not "
                             f"match the digest recorded on the version: refusing to load")
    recorded = json.loads(data)["files"]
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(dst / "model")))
    found = digest_tree(local)
    changed = sorted(p for p in recorded if p in found and found[p] != recorded[p])
    missing = sorted(set(recorded) - set(found))
    added = sorted(set(found) - set(recorded))
    if changed or missing or added:
        parts = [f"{label} {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}"
                 for label, files in (("changed:", changed), ("missing:", missing),
                                      ("added:", added)) if files]
        raise IntegrityError(f"{where} differs from what was logged ({'; '.join(parts)}): "
                             "refusing to load it")
    return local
