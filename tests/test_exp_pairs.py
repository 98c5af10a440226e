"""Backend pairs: twin names (rnn_core.experiments.pairs) and the agreement rows the pipeline logs
(rnn_core.comparisons.backend_agreement), on hand-made metrics: pure functions, no data."""

import math
import subprocess
import sys

import pytest

from rnn_core import comparisons
from rnn_core.comparisons import TOLERANCES, Tolerance, agreement_table, backend_agreement
from rnn_core.experiments import pairs
from rnn_core.layers import BACKENDS


def test_twin_names_round_trip_and_follow_their_configuration():
    assert pairs.BACKENDS == BACKENDS  # spelt twice so that comparisons imports no torch
    assert pairs.split_twin("lstm8-scratch") == ("lstm8", "scratch")
    assert pairs.split_twin("course-10st-in-fused") == ("course-10st-in", "fused")
    assert pairs.split_twin("gru-10st-in") == ("gru-10st-in", None)
    assert pairs.split_twin("-fused") == ("-fused", None)
    backend = {"a": "fused", "b": "scratch"}.get
    assert pairs.with_twins("x", ["a", "b", "c"], ["b", "a", "z"], backend) == [
        "a", "a-scratch", "b", "b-fused", "c"]  # z is not planned: no twin
    with pytest.raises(ValueError, match="already name a backend"):
        pairs.with_twins("x", ["a"], ["a-scratch"], backend)
    with pytest.raises(ValueError, match="unknown backend"):
        pairs.other_backend("cudnn")


def test_comparisons_import_no_torch():
    code = "import sys, rnn_core.comparisons; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rows_per_pair_and_metric_with_their_tolerance():
    rows = backend_agreement([
        ("ag_news", "lstm8", {"test_accuracy": 0.851, "test_loss": 0.4}),
        ("ag_news", "lstm8-scratch", {"test_accuracy": 0.846}),
        ("ag_news", "bilstm64x2", {"test_accuracy": 0.9}),  # no twin: no row
        ("metro_classification", "course-10st-in", {"test_error_L73": 0.10,
                                                    "test_error_L20": 0.30}),
        ("metro_classification", "course-10st-in-fused", {"test_error_L73": 0.157,
                                                          "test_error_L20": 0.31}),
        ("metro_forecasting", "gru-inout-ctx", {"test_mse_h1": 0.0015}),
        ("metro_forecasting", "gru-inout-ctx-scratch", {"test_mse_h1": 0.00153}),
    ])
    assert [(r["configuration"], r["metric"]) for r in rows] == [
        ("lstm8", "test_accuracy"), ("course-10st-in", "test_error_L73"),
        ("course-10st-in", "test_error_L20"), ("gru-inout-ctx", "test_mse_h1")]
    ag, l73, l20, mse = rows
    assert (ag["fused"], ag["scratch"], ag["twin"]) == (0.851, 0.846, "lstm8-scratch")
    assert ag["difference"] == pytest.approx(-0.005) and ag["agree"]
    assert ag["tolerance"] == TOLERANCES["test_accuracy"].value and ag["why"]
    # the course's class is the hand-written side: its twin is the torch.nn one
    assert (l73["fused"], l73["scratch"]) == (0.157, 0.10)
    assert not l73["agree"] and l20["agree"]
    assert mse["measure"] == "relative" and mse["difference"] == pytest.approx(0.02)
    assert mse["agree"]
    table = agreement_table(rows)
    assert table.count("\n") == 1 + len(rows) and "| NO |" in table and "(rel.)" in table


def test_rows_accept_pairs_results_and_custom_tolerances():
    class Result:  # anything with .task, .name, .metrics (a RunResult, a summary row)
        def __init__(self, name, value):
            self.task, self.name, self.metrics = "char_generation", name, {
                "test_bits_per_char": value}

    rows = backend_agreement([Result("trump-rnn", 2.05), Result("trump-rnn-scratch", 2.06)])
    assert rows[0]["experiment"] == "char_generation" and rows[0]["agree"]
    rows = backend_agreement([("x", {"m": 1.0}), ("x-scratch", {"m": 1.3})],
                             {"m": Tolerance(0.1, "absolute", "test")})
    assert rows[0]["experiment"] == "" and rows[0]["difference"] == pytest.approx(0.3)
    assert not rows[0]["agree"]


def test_ratios_are_compared_in_orders_of_magnitude():
    tol = TOLERANCES["grad_norm_ratio_d50"]
    assert tol.measure == "log10"
    assert tol.difference(1e-8, 1e-8 * 10**0.4) == pytest.approx(0.4)
    assert tol.difference(0.0, 1e-8) == math.inf  # a zero ratio cannot be compared
    rows = backend_agreement([("vanishing_gradients", "lstm", {"grad_norm_ratio_d50": 2e-9}),
                              ("vanishing_gradients", "lstm-scratch",
                               {"grad_norm_ratio_d50": 5e-9})])
    assert rows[0]["agree"] and rows[0]["difference"] == pytest.approx(math.log10(2.5))
    assert set(comparisons.TOLERANCES) >= {"test_error_L73", "test_accuracy", "test_mse_h1",
                                           "test_bits_per_char", "test_nats_per_char"}
