"""Inference from the registry on raw input: `rnnflow predict` and `inference.serve_champion` on
tiny untrained models of every serving kind in a temporary store; integrity checks (a tampered
model is refused); the CLI's one-line errors (exit code 2, no traceback)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from rnn_core.models import build_model, config_dict
from rnn_core.results import Headline, RunResult
from rnn_core.serving.chars import char_lm_spec
from rnn_core.serving.metro import flow_forecaster_spec, station_classifier_spec
from rnn_core.serving.text import text_classifier_spec
from tasks import tracking
from tasks.tracking import inference, names
from tasks.tracking.integrity import IntegrityError

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
TOKENS = ["<pad>", "<unk>", "oil", "prices", "fall", "stocks", "rally"] + [f"w{i}" for i in
                                                                          range(43)]


def _models():
    """(task, config name, model config, serving spec) of one tiny model per serving kind."""
    S, H = 3, 2
    return [
        ("ag_news", "gru6", {"kind": "classifier", "num_classes": 4, "vocab_size": 50,
                             "embedding_dim": 8, "hidden_size": 6, "cell": "gru",
                             "padding_idx": 0},
         text_classifier_spec(TOKENS, 50, 0, 1, CLASSES, "full", 100)),
        ("char_generation", "trump-gru", {"kind": "char_lm", "vocab_size": 30, "hidden_size": 8,
                                          "embedding_dim": 4, "cell": "gru"},
         char_lm_spec(list("\n abcdefghijklmnopqrstuvwxyz.'"), "trump")),
        ("metro_classification", "gru-3st-in", {"kind": "classifier", "num_classes": S,
                                                "input_size": 1, "cell": "gru", "hidden_size": 4},
         station_classifier_spec(S, [0], (), np.full((S, 2), 100.0))),
        ("metro_forecasting", "gru-in", {"kind": "forecaster", "num_flows": 1, "horizon": H,
                                         "hidden_size": 4, "cell": "gru", "num_covariates": 0},
         flow_forecaster_spec(S, [0], (), H, np.full((S, 2), 100.0))),
        ("vanishing_gradients", "rnn-lstm-gru", {"kind": "char_lm", "vocab_size": 10,
                                                 "hidden_size": 4, "embedding_dim": 2,
                                                 "cell": "rnn"}, {}),
    ]


def _result(tmp: Path, task, name, config, spec) -> RunResult:
    model = build_model(config)
    checkpoint = tmp / f"{task}-{name}.pt"
    torch.save({"model_state": model.state_dict(), "config": config_dict(model)}, checkpoint)
    return RunResult(task=task, name=name, params={}, metrics={"test_x": 0.5},
                     headline=Headline("test_x", "max"), model_config=config_dict(model),
                     checkpoint=checkpoint, serving=spec, tags={"data_variant": "full"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = tracking.configure(uri)
    names_by_task = {}
    for task, name, config, spec in [*_models(), ("ag_news", "tampered", *_models()[0][2:])]:
        result = _result(tmp, task, name, config, spec)
        parent = tracking.start_parent_run(client, task, "smoke", "pipe-p", {})
        _, version = tracking.log_result(client, result, parent)
        model = tracking.registered_name(result)
        client.set_registered_model_alias(model, "champion", version)
        names_by_task[name if name == "tampered" else task] = model
    return uri, client, names_by_task, tmp


def _cli(*args):
    result = CliRunner().invoke(app, ["predict", *map(str, args)])
    return result.exit_code, result.output


def test_each_kind_predicts_from_raw_input(store):
    uri, _, models, _ = store
    served = inference.serve_champion(models["ag_news"], tracking_uri=uri)
    assert served.kind == "text_classifier" and served.files_checked > 20
    out = served.model.predict(pd.DataFrame({"title": ["Oil prices fall", "Stocks rally"]}))
    assert list(out.columns[:3]) == ["label", "label_id", "probability"]
    assert set(out["label"]) <= set(CLASSES) and np.allclose(out[CLASSES].sum(axis=1), 1)

    text = inference.predict(models["char_generation"], pd.DataFrame({"prompt": ["oil "]}),
                             tracking_uri=uri, params={"length": 12, "seed": 1})
    assert len(text["text"][0]) == 12

    window = pd.DataFrame({"inflow": [[12, 30, 44]]})  # ints: counts of passengers
    station = inference.predict(models["metro_classification"], window, tracking_uri=uri)
    assert 0 <= station["station"][0] < 3 and len(station["probabilities"][0]) == 3

    flows = pd.DataFrame({"inflow": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]})
    forecast = inference.predict(models["metro_forecasting"], flows, tracking_uri=uri)
    assert list(forecast.columns) == ["station", "last_observed", "inflow_h1", "inflow_h2"]
    assert forecast.shape == (3, 4)

    logits = inference.predict(models["vanishing_gradients"],
                               np.array([[1, 2, 3]], dtype=np.int64), tracking_uri=uri)
    assert logits.shape == (1, 3, 10)


def test_the_registry_knows_each_version_digest_and_kind(store):
    _, client, models, _ = store
    mv = client.get_model_version(models["ag_news"], "1")
    assert len(mv.tags[names.MODEL_DIGEST_TAG]) == 64
    assert mv.tags[names.SERVING_KIND_TAG] == "text_classifier"
    assert client.get_model_version(models["vanishing_gradients"], "1").tags[
        names.SERVING_KIND_TAG] == "tensor"


def test_a_tampered_model_is_refused(store):
    uri, client, models, _ = store
    name = models["tampered"]
    inference.serve_champion(name, tracking_uri=uri)  # loads while untouched
    mv = client.get_model_version(name, "1")
    logged = client.get_logged_model(mv.source.rsplit("/", 1)[-1])
    code = Path(logged.artifact_location.removeprefix("file://")) / "pyfunc_model.py"
    with code.open("a") as fh:
        fh.write("print('and now something else')\n")
    with pytest.raises(IntegrityError, match=r"changed: pyfunc_model.py.*refusing to load"):
        inference.serve_champion(name, tracking_uri=uri)
    code_, output = _cli(name, "--text", "Oil prices fall", "--tracking-uri", uri)
    assert code_ == 2 and "differs from what was logged" in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1
    # --no-verify is the explicit way round, for models logged before digests existed
    assert _cli(name, "--text", "Oil", "--no-verify", "--tracking-uri", uri)[0] == 0


def test_cli_serves_each_raw_form_and_says_which_version(store, tmp_path):
    uri, _, models, _ = store
    code, out = _cli("ag_news", "--config", "gru6", "--text", "Oil prices fall",
                     "--tracking-uri", uri)
    assert code == 0 and f"models:/{models['ag_news']}@champion = version 1" in out
    assert "files match their sha256" in out and "label" in out
    texts = tmp_path / "texts.csv"
    texts.write_text('title,description\nOil prices fall,"crude, again"\nStocks rally,\n')
    code, out = _cli(models["ag_news"], "--input", texts, "--output", tmp_path / "o.csv",
                     "--tracking-uri", uri)
    assert code == 0 and len(pd.read_csv(tmp_path / "o.csv")) == 2
    code, out = _cli(models["char_generation"], "--prompt", "oil ", "--length", 9,
                     "--seed", 2, "--tracking-uri", uri)
    assert code == 0 and len(out.strip().splitlines()[-1]) == len("oil ") + 9
    window = tmp_path / "window.csv"
    window.write_text("inflow\n10\n25\n40\n")
    code, out = _cli(models["metro_classification"], "--input", window, "--tracking-uri", uri)
    assert code == 0 and "station" in out
    np.save(tmp_path / "flows.npy", np.arange(3 * 3 * 1, dtype=float).reshape(3, 3, 1))
    code, out = _cli(models["metro_forecasting"], "--input", tmp_path / "flows.npy",
                     "--start", "2019-01-21T07:30", "--tracking-uri", uri)
    assert code == 0 and "inflow_h2" in out and "2019-01-21T08:00" in out  # last observed


@pytest.mark.parametrize("case", ["missing file", "malformed csv", "not a number", "no column",
                                  "bad npy", "no champion", "no input", "bad input"])
def test_cli_errors_are_one_line_with_exit_code_2(store, tmp_path, case):
    uri, _, models, _ = store
    bad = tmp_path / "bad.csv"
    args = {
        "missing file": [models["metro_classification"], "--input", tmp_path / "nope.csv"],
        "malformed csv": [models["ag_news"], "--input", bad],
        "not a number": [models["metro_classification"], "--input", bad],
        "no column": [models["ag_news"], "--input", bad],
        "bad npy": [models["metro_forecasting"], "--input", tmp_path / "x.npy"],
        "no champion": ["ag_news", "--config", "nothing-trained", "--text", "x"],
        "no input": [models["ag_news"]],
        "bad input": [models["char_generation"], "--prompt", "ab", "--length", 0],
    }[case]
    bad.write_text({"malformed csv": 'title\n"unterminated\n', "not a number": "inflow\n1\nx\n",
                    "no column": "headline\nOil\n"}.get(case, "title\nx\n"))
    (tmp_path / "x.npy").write_bytes(b"not an array")
    expected = {"missing file": "nope.csv: no such file", "malformed csv": "malformed CSV",
                "not a number": "line 3: inflow 'x' is not a number",
                "no column": "no title column", "bad npy": "not a readable .npy",
                "no champion": "no champion for model 'rnnflow-ag-news-nothing-trained'",
                "no input": "takes --text HEADLINE", "bad input": "length must lie in"}[case]
    code, output = _cli(*args, "--tracking-uri", uri)
    assert code == 2, output
    assert output.startswith("rnnflow predict: ") and expected in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1


def test_no_champion_yet_in_an_empty_store(tmp_path):
    code, output = _cli("ag_news", "--config", "lstm8", "--text", "x",
                        "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}")
    assert code == 2 and "registered models: none" in output and "Traceback" not in output
