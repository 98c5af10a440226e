"""Live child runs: RUNNING with its per-epoch (and system) metrics while the configuration still
trains, completed in place by the log step with its dataset inputs; a killed attempt's children
end KILLED when the retry starts, like its parents.

The configuration is the smoke profile's metro classifier on the mirror's data, trained by the
real runner through the train task's body (`tasks.training.train_tracked`); a subclass looks
into the store from inside training, when each epoch after the second one starts.
"""

import logging

import pytest

from rnn_core.experiments.metro_classification import MetroClassification
from tasks import tracking
from tasks.tracking import names
from tasks.tracking.live import start_child_run
from tasks.training import train_tracked


class Watched(MetroClassification):
    """The real experiment; its batch source records what the store shows mid-training."""

    def __init__(self, client):
        self.client, self.run_id, self.seen = client, None, []

    def batches(self, config, name, data):
        batches = super().batches(config, name, data)
        train = batches.train

        def watched(epoch):
            if epoch >= 2 and self.run_id is None:  # the run this training streams into
                [run] = self.client.search_runs(
                    [tracking.experiment_id(self.client, self.name)],
                    f"tags.`{names.CONFIG_TAG}` = '{name}' and attributes.status = 'RUNNING'")
                self.run_id = run.info.run_id
            if self.run_id is not None:
                run = self.client.get_run(self.run_id)
                history = self.client.get_metric_history(self.run_id, "val_error")
                self.seen.append((epoch, run.info.status, sorted(m.step for m in history),
                                  sorted(run.data.metrics)))
            return train(epoch)

        batches.train = watched
        return batches


@pytest.fixture
def client(tmp_path):
    return tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_child_run_is_live_while_training_then_completed_with_datasets(
        client, manifests, tmp_path, monkeypatch):
    from flows.profiles import load_profile

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    config = load_profile("smoke").config("metro_classification")
    config.train.epochs = 4
    config.batches_per_epoch = 12  # ~0.3 s an epoch: the monitor samples a few times
    exp = Watched(client)
    name = exp.plan(config)[0]
    needs = manifests("metro")
    tags = tracking.pipeline_tags("smoke", "pipe-live")
    parent = tracking.start_parent_run(client, exp.name, "smoke", "pipe-live", {})
    run_id, result = train_tracked(exp, config, name, needs, str(tmp_path / "ck"), client,
                                   parent, tags, logging.getLogger("test"))

    # While epochs 2 and 3 were training, the run was RUNNING with the epochs before them.
    assert run_id == exp.run_id
    assert [(e, status, steps) for e, status, steps, _ in exp.seen] == [
        (2, "RUNNING", [0, 1]), (3, "RUNNING", [0, 1, 2])]
    assert {"train_loss", "val_loss", "lr"} <= set(exp.seen[-1][3])
    assert not [k for k in exp.seen[-1][3] if "_class_" in k]  # no per-class curves
    live = client.get_run(run_id)
    assert live.info.status == "RUNNING"  # left for the log step
    assert live.data.tags[names.PIPELINE_ID_TAG] == "pipe-live"
    assert any(k.startswith(names.SYSTEM_METRICS_PREFIX + "cpu") for k in live.data.metrics)

    # The log step completes the same run: no second run, no epoch logged twice.
    done_id, version = tracking.log_result(client, result, parent, tags, run_id=run_id,
                                           manifests={d: m.to_json() for d, m in needs.items()})
    assert done_id == run_id and version == "1"
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED"
    # (The chosen epoch's val_error comes again as a final metric, after the last epoch.)
    steps = [m.step for m in client.get_metric_history(run_id, "val_error")]
    assert steps[:4] == [0, 1, 2, 3] and steps[4:] == [3]
    assert "test_error_L73" in done.data.metrics and done.data.params
    children = client.search_runs([live.info.experiment_id],
                                  f"tags.`{names.ROLE_TAG}` = '{names.ROLE_CHILD}'")
    assert [c.info.run_id for c in children] == [run_id]

    # Dataset inputs: train / validation / test, from the prepared files, with digests.
    inputs = {i.dataset.name: i for i in done.inputs.dataset_inputs}
    assert set(inputs) == {"metro/train", "metro/validation", "metro/test"}
    contexts = {name: {t.key: t.value for t in i.tags}[names.DATASET_CONTEXT_TAG]
                for name, i in inputs.items()}
    assert contexts == {"metro/train": "train", "metro/validation": "validation",
                        "metro/test": "test"}
    test_file = needs["metro"].files["test.parquet"]
    assert test_file.sha256 in inputs["metro/test"].dataset.profile
    assert test_file.path in inputs["metro/test"].dataset.source
    assert len({i.dataset.digest for i in inputs.values()}) == 3


def test_a_retry_closes_the_children_a_killed_attempt_left_running(client):
    tags = tracking.pipeline_tags("smoke", "pipe-kill")
    parent = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-kill", {})
    child = start_child_run(client, "ag_news", "lstm8", parent, "test_accuracy", "cpu", tags)
    other = start_child_run(client, "ag_news", "lstm8", "p", "test_accuracy", "cpu",
                            tracking.pipeline_tags("smoke", "another-pipeline"))
    # ... the process is killed here; the retry of the same flow run starts its parent again:
    retry = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-kill", {})
    for run_id in (parent, child):
        stale = client.get_run(run_id)
        assert stale.info.status == "KILLED" and names.INTERRUPTED_TAG in stale.data.tags
    assert client.get_run(other).info.status == "RUNNING"  # another pipeline run's: untouched
    assert client.get_run(retry).info.status == "RUNNING"


def test_a_failed_training_marks_its_live_run_failed(client, tmp_path):
    class Broken(MetroClassification):
        def data(self, config, name, manifests):
            raise RuntimeError("no data today")

    from flows.profiles import load_profile

    config = load_profile("smoke").config("metro_classification")
    name = Broken().plan(config)[0]
    parent = tracking.start_parent_run(client, "metro_classification", "smoke", "pipe-f", {})
    with pytest.raises(RuntimeError, match="no data today"):
        train_tracked(Broken(), config, name, {"metro": _fake_manifest(tmp_path)},
                      str(tmp_path / "ck"), client, parent, {}, logging.getLogger("test"))
    [child] = client.search_runs([tracking.experiment_id(client, "metro_classification")],
                                 f"tags.`{names.ROLE_TAG}` = 'child'")
    assert child.info.status == "FAILED"


def _fake_manifest(tmp_path):
    from rnn_core.datasets.manifest import DatasetManifest

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("x")
    return DatasetManifest.build("metro", "full", tmp_path / "m", ["x"], rows={})


def test_a_task_run_again_in_the_same_flow_run_continues_its_run(client):
    """A Dask worker dies, the task runs again under the same parent: one run, no epoch twice."""
    from tasks.tracking.live import EpochMetrics

    tags = tracking.pipeline_tags("smoke", "pipe-again")
    parent = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-again", {})
    first = start_child_run(client, "ag_news", "lstm8", parent, "test_accuracy", "cpu", tags)
    EpochMetrics(client, first).on_epoch_end(0, {"epoch": 0.0, "train_loss": 1.0})
    again = start_child_run(client, "ag_news", "lstm8", parent, "test_accuracy", "cpu", tags)
    assert again == first
    resumed = EpochMetrics(client, again)
    for epoch, loss in ((0, 1.0), (1, 0.8)):  # the resumed training repeats epoch 0 at most
        resumed.on_epoch_end(epoch, {"epoch": float(epoch), "train_loss": loss})
    assert [m.step for m in client.get_metric_history(first, "train_loss")] == [0, 1]
    retry_parent = tracking.start_parent_run(client, "ag_news", "smoke", "pipe-again", {})
    assert client.get_run(first).info.status == "KILLED"  # a flow retry: a new run
    assert start_child_run(client, "ag_news", "lstm8", retry_parent, "test_accuracy", "cpu",
                           tags) != first
