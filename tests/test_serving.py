"""rnn_core.serving on tiny untrained models: raw input in, typed output out, one-sentence errors,
and the preprocessing equal to what the data phases feed the models in training."""

import datetime as dt

import numpy as np
import pytest
import torch

from rnn_core.models import build_model
from rnn_core.serving import ServingInputError, load_server, save_spec, server_for
from rnn_core.serving.chars import char_lm_spec
from rnn_core.serving.metro import flow_forecaster_spec, station_classifier_spec
from rnn_core.serving.text import text_classifier_spec

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


def _text_server(text="full"):
    model = build_model({"kind": "classifier", "num_classes": 4, "vocab_size": 50,
                         "embedding_dim": 8, "hidden_size": 6, "cell": "gru", "padding_idx": 0})
    tokens = ["<pad>", "<unk>", "stocks", "oil", "prices", "fall", "rally", "as"] + [
        f"w{i}" for i in range(52)]
    return server_for(model, text_classifier_spec(tokens, 50, 0, 1, CLASSES, text, 100))


def test_text_classifier_gives_label_names_and_probabilities():
    server = _text_server()
    out = server.predict({"title": ["Stocks rally as oil prices fall", "Oil"],
                          "description": ["", None]})
    assert set(out["label"]) <= set(CLASSES) and len(out["label"]) == 2
    probs = np.array([out[c] for c in CLASSES]).T
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1)
    assert out["probability"] == pytest.approx(probs.max(axis=1).tolist())


def test_text_is_encoded_as_the_prepare_step_did():
    from rnn_core.datasets.ag_news import build_vocab, clean_text, tokenize

    server = _text_server()
    raw_title, raw_description = "Oil  prices #39;fall#39; \\ as stocks rally", "quot;Stocks quot;"
    text = " ".join([clean_text(raw_title), clean_text(raw_description)])
    vocab = build_vocab([tokenize(text)], size=100)
    expected = [server.index.get(t, 1) for t in tokenize(text)]
    assert server.encode(raw_title, raw_description, 0) == expected
    assert len(vocab) > 2 and expected.count(1) < len(expected)  # most tokens are known
    title_only = _text_server("title")
    assert title_only.encode(raw_title, raw_description, 0) == expected[: len(
        tokenize(clean_text(raw_title)))]


def test_text_classifier_errors_are_one_sentence():
    server = _text_server()
    with pytest.raises(ServingInputError, match="empty after cleaning"):
        server.predict({"title": ["  \\  "]})
    with pytest.raises(ServingInputError, match="missing input column"):
        server.predict({"headline": ["x"]})
    with pytest.raises(ServingInputError, match="no rows"):
        server.predict({"title": []})


def _station_server(stations=5, time=True):
    model = build_model({"kind": "classifier", "num_classes": stations,
                         "input_size": 2 + 3 * time, "cell": "gru", "hidden_size": 8})
    maxima = np.linspace(50, 900, stations * 2).reshape(stations, 2)
    return server_for(model, station_classifier_spec(stations, [0, 1], ("time",) * time, maxima))


@torch.no_grad()
def test_station_classifier_scores_every_station_hypothesis():
    server = _station_server()
    out = server.predict({"inflow": [[10, 20, 30], [5, 6]], "outflow": [[1, 2, 3], [7, 8]],
                          "start": ["07:30", "2019-01-21T18:00"]})
    assert len(out["station"]) == 2 and all(0 <= s < 5 for s in out["station"])
    probs = np.array(out["probabilities"])
    assert probs.shape == (2, 5) and np.allclose(probs.sum(axis=1), 1)
    # The score of station s is the model's log p(s) on the window divided by s's maxima.
    x = np.array([[10, 1], [20, 2], [30, 3]], dtype=np.float64)
    s = 3
    inputs = torch.tensor(x / server.maxima[s], dtype=torch.float32)[:, None]
    slots = torch.arange(8, 11)[:, None]
    from rnn_core.experiments.metro_common import time_features

    logits, _ = server.model(torch.cat([inputs, time_features(slots)], dim=-1))
    logp = torch.log_softmax(logits.double(), -1)[0, s]
    scores = []
    for k in range(5):
        xin = torch.tensor(x / server.maxima[k], dtype=torch.float32)[:, None]
        lg, _ = server.model(torch.cat([xin, time_features(slots)], dim=-1))
        scores.append(torch.log_softmax(lg.double(), -1)[0, k])
    expected = torch.softmax(torch.stack(scores), 0)[s]
    assert probs[0, s] == pytest.approx(float(expected), rel=1e-5) and float(logp) < 0


@pytest.mark.parametrize("bad, message", [
    ({"inflow": [[1, float("nan")]], "outflow": [[1, 2]], "start": ["07:30"]}, "NaN"),
    ({"inflow": [[1, 2]], "outflow": [[1]], "start": ["07:30"]}, "different lengths"),
    ({"inflow": [[1, 2]], "outflow": [[1, 2]]}, "missing input column"),
    ({"inflow": [[1, -2]], "outflow": [[1, 2]], "start": ["07:30"]}, ">= 0"),
    ({"inflow": [[1, 2]], "outflow": [[1, 2]], "start": ["07:31"]}, "quarter-hour"),
    ({"inflow": [[1] * 10], "outflow": [[1] * 10], "start": ["23:15"]}, "past 23:30"),
    ({"inflow": [["a", "b"]], "outflow": [[1, 2]], "start": ["07:30"]}, "list of numbers"),
])
def test_station_classifier_refuses_bad_windows(bad, message):
    with pytest.raises(ServingInputError, match=message):
        _station_server().predict(bad)


def _forecaster(stations=4, horizon=3):
    covariates = ("station", "time", "offday", "profile")
    model = build_model({"kind": "forecaster", "num_flows": 2, "horizon": horizon,
                         "num_covariates": stations + 3 + 1 + horizon * 2, "hidden_size": 8,
                         "cell": "gru", "residual": True})
    maxima = np.full((stations, 2), 100.0)
    profiles = np.random.default_rng(0).random((2, 73, stations, 2))
    spec = flow_forecaster_spec(stations, [0, 1], covariates, horizon, maxima, profiles,
                                (dt.date(2019, 1, 1),))
    return server_for(model, spec)


@torch.no_grad()
def test_forecaster_rebuilds_the_covariates_of_the_data_phase():
    """The served input equals metro_forecasting.make_windows on the same normalised days."""
    from rnn_core.experiments import metro_forecasting as mf
    from rnn_core.experiments.metro_common import Spec

    server = _forecaster()
    S, H, L = 4, 3, 6
    days = torch.rand(1, 73, S, 2)
    start = 10  # 08:00
    spec = Spec("gru-inout-ctx", "gru", S, "inout", [0, 1], ("station", "time", "offday",
                                                               "profile"))
    monday = dt.date(2019, 1, 21)
    ctx = {"off": torch.tensor([0.0]), "expected": torch.as_tensor(
        server.profiles[0:1], dtype=torch.float32), "stations": S}
    windows = torch.tensor([[0, s, start] for s in range(S)])
    expected = mf.make_windows(days, windows, L, spec, ctx, H).batch.x
    flows = days[0, start : start + L].transpose(0, 1)  # S x L x 2, normalised by 100
    got = server.with_covariates(flows.transpose(0, 1), torch.arange(S), start, monday)
    assert torch.allclose(got, expected, atol=1e-6)
    raw = (flows * 100).numpy()
    out = server.predict({"inflow": [r[:, 0].tolist() for r in raw],
                          "outflow": [r[:, 1].tolist() for r in raw],
                          "start": ["2019-01-21T08:00"] * S})
    pred, _ = server.model(expected)
    assert out["inflow_h2"] == pytest.approx((pred[-1, :, 1, 0].double() * 100).tolist())
    assert out["last_observed"] == ["2019-01-21T09:15"] * S and out["station"] == [0, 1, 2, 3]


def test_forecaster_station_count_date_and_day_end():
    server = _forecaster()
    rows = {"inflow": [[5.0] * 4] * 3, "outflow": [[5.0] * 4] * 3, "start": ["2019-01-21T08:00"] * 3}
    with pytest.raises(ServingInputError, match="forecasts 4 stations: got 3 rows"):
        server.predict(rows)
    with pytest.raises(ServingInputError, match=r"unknown station\(s\) \[7\]"):
        server.predict({**rows, "station": [0, 1, 7]})
    assert server.predict({**rows, "station": [2, 0, 1]})["station"] == [2, 0, 1]
    with pytest.raises(ServingInputError, match="needs the date"):
        server.predict({**rows, "station": [0, 1, 2], "start": ["08:00"] * 3})
    late = server.predict({**rows, "station": [0, 1, 2], "start": ["2019-01-21T22:15"] * 3})
    assert np.isfinite(late["inflow_h2"]).all() and np.isnan(late["inflow_h3"]).all()
    assert server.is_off(dt.date(2019, 1, 1)) and not server.is_off(dt.date(2019, 1, 21))


def test_char_lm_generates_from_a_prompt_reproducibly():
    model = build_model({"kind": "char_lm", "vocab_size": 30, "hidden_size": 16,
                         "embedding_dim": 8, "cell": "lstm"})
    vocab = list("\n abcdefghijklmnopqrstuvwxyz.'")
    server = server_for(model, char_lm_spec(vocab, "trump"))
    params = {"length": 40, "temperature": 0.8, "seed": 3}
    out = server.predict({"prompt": ["we are going to ", ""]}, params)
    assert [len(t) for t in out["text"]] == [40, 40] and set("".join(out["text"])) <= set(vocab)
    assert server.predict({"prompt": ["we are going to "]}, params)["text"][0] == out["text"][0]
    assert server.predict({"prompt": ["we are\u2019 "]}, params)["prompt"] == ["we are' "]
    for bad, message in [({"length": 0}, "length must lie"), ({"temperature": -1}, "> 0"),
                         ({"bogus": 1}, "unknown parameter"), ({"mode": "beam"}, "mode")]:
        with pytest.raises(ServingInputError, match=message):
            server.predict({"prompt": ["ab"]}, bad)
    with pytest.raises(ServingInputError, match="not in this model"):
        server.predict({"prompt": ["WE"]})


def test_spec_round_trip_through_files(tmp_path):
    server = _forecaster()
    model = server.model
    torch.save({"model_state": model.state_dict(), "config": {"kind": "forecaster",
                **{k: v for k, v in vars(model.config).items()}}}, tmp_path / "model.pt")
    save_spec(server.spec, tmp_path / "serving")
    assert sorted(p.name for p in (tmp_path / "serving").iterdir()) == ["serving.json",
                                                                       "serving.npz"]
    loaded = load_server(tmp_path / "model.pt", tmp_path / "serving")
    example = server.example()
    got, expected = loaded.predict(example), server.predict(example)
    assert got.keys() == expected.keys() and got["station"] == expected["station"]
    assert got["inflow_h1"] == pytest.approx(expected["inflow_h1"])
