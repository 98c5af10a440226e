"""Profiles are checked whole when they are loaded: every experiment's table, with ranges, in one
line naming the file, the table and the key, before any data is prepared."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from flows.profiles import ProfileError, available, load_profile
from rnn_core import experiments

REPO = Path(__file__).resolve().parents[1]

# Bad values every experiment's tree must refuse: (dotted key, value).
GENERIC = [("train.epochs", -1), ("train.epochs", 0), ("train.lr", 0.0),
           ("train.optimizer", "adagrad"), ("train.select_epoch", "best_test"),
           ("train.precision", "fp8"), ("train.seed", -3), ("no_such_key", 1),
           ("train.no_such_knob", 1)]


def _model_keys(name: str) -> list[tuple[str, object]]:
    """Size and backend keys of the experiment's model block, set to bad values."""
    config = experiments.get(name).Config()
    fields = {f.name for f in dataclasses.fields(config.model)}
    bad = [(f"model.{k}", 0) for k in ("hidden_size", "embedding_dim") if k in fields]
    return bad + ([("model.backend", "cudnn")] if "backend" in fields else [])


CASES = [(name, key, value) for name in experiments.names()
         for key, value in GENERIC + _model_keys(name)]


def _toml(name: str, key: str, value) -> str:
    *tables, leaf = key.split(".")
    header = ".".join([name, *tables])
    literal = f'"{value}"' if isinstance(value, str) else repr(value)
    return f"[{header}]\n{leaf} = {literal}\n"


@pytest.mark.parametrize("name, key, value", CASES, ids=[f"{n}-{k}={v}" for n, k, v in CASES])
def test_a_bad_value_fails_at_load_naming_file_table_and_key(tmp_path, name, key, value):
    path = tmp_path / "bad.toml"
    path.write_text(_toml(name, key, value))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert str(path) in message and f"[{name}]" in message and key in message
    assert "\n" not in message


def test_every_shipped_profile_loads():
    assert set(available()) >= {"smoke", "default", "full"}
    for profile in available():
        loaded = load_profile(profile)
        assert loaded.experiments and set(loaded.configs) >= set(loaded.experiments)


def test_syntax_errors_unknown_names_and_missing_files_are_one_line(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[ag_news]\nmodels = [\"lstm8\"\nepochs = 3\n")
    with pytest.raises(ProfileError, match=rf"{broken}: not valid TOML: .*line"):
        load_profile(str(broken))
    with pytest.raises(ProfileError, match="no profile 'nosuch': expected one of"):
        load_profile("nosuch")
    with pytest.raises(ProfileError, match="--only: unknown experiment 'nosuch'"):
        load_profile("smoke", only=["nosuch"])
    with pytest.raises(ProfileError, match="not found"):
        load_profile(str(tmp_path / "absent.toml"))


@pytest.mark.slow
def test_the_cli_refuses_a_bad_profile_before_any_work(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[vanishing_gradients.train]\nepochs = -1\n")
    data = tmp_path / "data"
    out = subprocess.run(
        [str(Path(sys.executable).with_name("rnnflow")), "run", "--profile", str(bad),
         "--data-dir", str(data)],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"rnnflow run: {bad}: [vanishing_gradients] train.epochs = -1: must be >= 1"]
    assert "Traceback" not in out.stderr and not data.exists()
