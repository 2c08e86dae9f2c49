"""MLflow lineage: run tree, params, metrics by step, images, datasets, tags, registry aliases, and fallback.

sqlite stores in tmp_path for most tests; one test runs a real ``mlflow server`` (job execution off) on a free
127.0.0.1 port, reads the run tree back through MlflowClient, then stops the server and checks that logging goes
on locally with a warning.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from htgrpo.config import TrackingConfig
from htgrpo.tracking import PARENT_TAG, Tracker, digest_rows, numeric_metrics
from rl_tiny import tiny_config
from servers import MlflowServer


@pytest.fixture(autouse=True)
def clean_mlflow_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)


def tracking(uri: str, tmp_path, **kw) -> TrackingConfig:
    return TrackingConfig(
        enabled=True,
        tracking_uri=uri,
        artifact_root=str(tmp_path / "artifacts"),
        registered_model="tiny",
        **kw,
    )


def log_a_pipeline(tracker: Tracker, tmp_path) -> dict[str, str]:
    cfg = tiny_config()
    parent = tracker.start_pipeline_run(cfg, "pipeline-1", tags={"kfp.run_id": "abc"})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a photo of a cat", "tag": "single_object"}\n')
    tracker.log_dataset(parent, "prompts-train", f"file://{prompts}", digest_rows([{"p": 1}]))
    child = tracker.start_run("round-1-global", parent, tags={"stage": "global", "round": "1"})
    for step in (1, 2):
        tracker.log_metrics(
            child, {"reward_mean": 0.1 * step, "stages": {"global": {"kl": 0.01}}, "x": None}, step
        )
    tracker.log_image(child, np.zeros((8, 8, 3), dtype=np.uint8), key="samples", step=1)
    tracker.set_tags(child, {"checkpoint_uri": "s3://b/run/round-1/global"})
    tracker.end_run(child)
    tracker.end_run(parent)
    return {"parent": parent, "child": child}


def check_tree(client, ids, cfg_keys: int) -> None:
    parent = client.get_run(ids["parent"])
    assert parent.data.params["rl.method"] == "ht-grpo"
    assert len(parent.data.params) == cfg_keys
    assert parent.data.tags["kfp.run_id"] == "abc"
    assert parent.inputs.dataset_inputs[0].dataset.name == "prompts-train"
    child = client.get_run(ids["child"])
    assert child.data.tags[PARENT_TAG] == ids["parent"]
    assert child.data.tags["checkpoint_uri"] == "s3://b/run/round-1/global"
    hist = client.get_metric_history(ids["child"], "reward_mean")
    assert [(m.step, round(m.value, 3)) for m in hist] == [(1, 0.1), (2, 0.2)]
    assert client.get_metric_history(ids["child"], "stages/global/kl")[0].value == 0.01
    arts = [a.path for a in client.list_artifacts(ids["child"], "images")]
    assert any(a.startswith("images/samples") for a in arts)


def test_numeric_metrics_flattens_and_drops_non_numbers():
    assert numeric_metrics({"a": 1, "b": {"c": 2.5, "d": None, "e": True}, "f": float("nan"), "g": "x"}) == {
        "a": 1.0,
        "b/c": 2.5,
    }


def test_sqlite_run_tree_and_registry(tmp_path):
    from mlflow import MlflowClient

    from htgrpo.config import config_to_dict
    from htgrpo.tracking import flatten

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(tracking(uri, tmp_path), tmp_path)
    ids = log_a_pipeline(tracker, tmp_path)
    client = MlflowClient(uri)
    check_tree(client, ids, len(flatten(config_to_dict(tiny_config()))))

    first = tracker.register("s3://b/run1/final", ids["parent"], {"overall": 0.4})
    assert first["version"] == 1 and first["promoted"]
    worse = tracker.register("s3://b/run2/final", ids["parent"], {"overall": 0.3})
    assert worse["version"] == 2 and not worse["promoted"]
    better = tracker.register("s3://b/run3/final", ids["parent"], {"overall": 0.5})
    assert better["promoted"] and better["previous_champion"] == {"version": 1, "value": 0.4}
    assert str(client.get_model_version_by_alias("tiny", "candidate").version) == "3"
    champ = client.get_model_version_by_alias("tiny", "champion")
    assert str(champ.version) == "3" and champ.source == "s3://b/run3/final"
    assert not (tmp_path / "mlflow-offline").exists()


def test_disabled_tracker_does_nothing(tmp_path):
    tracker = Tracker(TrackingConfig(enabled=False), tmp_path)
    assert tracker.start_run("x") is None
    tracker.log_metrics(None, {"a": 1}, 1)
    assert tracker.register("file://x", None, {"overall": 1.0})["version"] is None
    assert not list(tmp_path.iterdir())


def test_unreachable_tracking_goes_on_locally(tmp_path):
    uri = "http://127.0.0.1:9"  # nothing listens on the discard port
    tracker = Tracker(tracking(uri, tmp_path, http_retries=0, http_timeout_s=2), tmp_path)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="training goes on"):
        run = tracker.start_run("pipeline")
    assert run.startswith("offline-")
    tracker.log_metrics(run, {"reward_mean": 0.5}, step=3)
    assert time.monotonic() - start < 60
    lines = [json.loads(x) for x in (tmp_path / "mlflow-offline/tracking.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "metrics" and lines[-1]["data"] == {
        "step": 3,
        "metrics": {"reward_mean": 0.5},
    }


@pytest.mark.slow
def test_real_mlflow_server_run_tree_then_server_stopped(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from htgrpo.config import config_to_dict
    from htgrpo.tracking import flatten

    server = MlflowServer(tmp_path / "server").start()
    try:
        tracker = Tracker(tracking(server.url, tmp_path, http_retries=0, http_timeout_s=3), tmp_path)
        ids = log_a_pipeline(tracker, tmp_path)
        check_tree(MlflowClient(server.url), ids, len(flatten(config_to_dict(tiny_config()))))
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        (ckpt / "manifest.json").write_text("{}")
        reg = tracker.register(f"file://{ckpt}", ids["parent"], {"overall": 0.2})
        assert reg["promoted"] and reg["version"] == 1
        mv = MlflowClient(server.url).get_model_version_by_alias("tiny", "champion")
        assert mv.source.endswith("/artifacts/checkpoint") and mv.tags["checkpoint_uri"] == f"file://{ckpt}"
        run = tracker.start_run("round-2-global", ids["parent"])
        server.stop()
        with pytest.warns(RuntimeWarning, match="training goes on"):
            tracker.log_metrics(run, {"reward_mean": 0.7}, step=5)
        tracker.log_metrics(run, {"reward_mean": 0.8}, step=6)  # offline now: no second wait, no warning
        lines = (tmp_path / "mlflow-offline/tracking.jsonl").read_text().splitlines()
        assert [json.loads(x)["data"]["step"] for x in lines] == [5, 6]
    finally:
        server.stop()


def test_htgrpo_train_logs_each_step_to_mlflow(tmp_path, monkeypatch, capsys):
    import yaml
    from mlflow import MlflowClient

    from htgrpo.checkpoint import save_checkpoint
    from htgrpo.cli import main
    from htgrpo.config import config_to_dict
    from rl_tiny import tiny_backbone

    monkeypatch.setenv("HTGRPO_THREADS", "1")
    cfg = tiny_config(steps=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    base = save_checkpoint(tmp_path / "base", tiny_backbone(), cfg)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [
        "train",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--init",
        str(base),
        "--out",
        str(tmp_path / "run"),
    ]
    argv += ["--set", "tracking.enabled=true", "--set", f"tracking.tracking_uri={uri}"]
    assert main(argv) == 0, capsys.readouterr().err
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("htgrpo").experiment_id])
    assert run.data.tags["htgrpo.kind"] == "train" and run.data.params["rl.steps"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "zero_variance_share")] == [1, 2]
    assert run.data.tags["checkpoint_uri"].endswith("checkpoints/step-000002")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tracker_tries_again_after_backoff_and_replays(tmp_path, monkeypatch):
    """An embedded store that cannot be opened (a file stands where its directory should be) is an outage:
    calls are kept, not retried before the backoff is over, and replayed in order (runs created offline get
    real ids) once it works."""
    import warnings

    from mlflow import MlflowClient

    clock = FakeClock()
    monkeypatch.setattr(Tracker, "clock", clock)
    (tmp_path / "later").write_text("not a directory")
    db = tmp_path / "later" / "mlflow.db"
    tracker = Tracker(tracking(f"sqlite:///{db}", tmp_path, retry_backoff_s=10), tmp_path / "run")
    with pytest.warns(RuntimeWarning, match="training goes on") as caught:
        parent = tracker.start_run("pipeline", tags={"kfp.run_id": "abc"})
    assert sum("training goes on" in str(w.message) for w in caught) == 1
    assert parent.startswith("offline-") and tracker.offline
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        child = tracker.start_run("round-1-global", parent)
        tracker.log_metrics(child, {"reward_mean": 0.25}, step=1)
        tracker.log_image(child, np.zeros((8, 8, 3), dtype=np.uint8), key="samples", step=1)
        clock.now = 11  # due: still failing, next try in 20 s
        tracker.log_metrics(child, {"reward_mean": 0.5}, step=2)
        assert tracker.offline and tracker.pending == 5
        db.parent.unlink()
        clock.now = 20  # the store works now, but no try is due
        tracker.set_tags(child, {"stage": "global"})
        assert tracker.offline and tracker.pending == 6
        clock.now = 32
        tracker.end_run(child)  # replays the six kept calls, then ends the run
    assert not [w for w in later if "training goes on" in str(w.message)]  # one warning per outage
    assert not tracker.offline and tracker.pending == 0 and tracker.replayed == 6
    tracker.end_run(parent)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("htgrpo").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert runs["pipeline"].data.tags["kfp.run_id"] == "abc"
    assert runs["pipeline"].info.status == "FINISHED"
    got = runs["round-1-global"]
    assert got.data.tags[PARENT_TAG] == runs["pipeline"].info.run_id and got.data.tags["stage"] == "global"
    assert got.info.status == "FINISHED"
    hist = client.get_metric_history(got.info.run_id, "reward_mean")
    assert [(m.step, m.value) for m in hist] == [(1, 0.25), (2, 0.5)]
    assert any(a.path.startswith("images/samples") for a in client.list_artifacts(got.info.run_id, "images"))
    lines = [json.loads(x) for x in (tmp_path / "run/mlflow-offline/tracking.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines][-1] == "replayed" and lines[-1]["calls"] == 6


@pytest.mark.slow
def test_real_mlflow_server_outage_then_back(tmp_path, monkeypatch):
    """A real ``mlflow server`` stopped mid-run and started again: no call waits on it while it is down (a
    short /health probe when a try is due), and what was logged meanwhile reaches it."""
    from mlflow import MlflowClient

    clock = FakeClock()
    monkeypatch.setattr(Tracker, "clock", clock)
    server = MlflowServer(tmp_path / "server").start()
    try:
        tracker = Tracker(tracking(server.url, tmp_path, http_retries=0, http_timeout_s=3), tmp_path)
        parent = tracker.start_run("pipeline")
        before = tracker.start_run("round-1-global", parent)
        tracker.log_metrics(before, {"reward_mean": 0.1}, step=1)
        server.stop()
        with pytest.warns(RuntimeWarning, match="training goes on"):
            tracker.log_metrics(before, {"reward_mean": 0.2}, step=2)
        start = time.monotonic()
        during = tracker.start_run("round-2-global", parent)
        for step in (3, 4):
            clock.now += 100  # every try due: a refused /health probe each, no MLflow request
            tracker.log_metrics(during, {"reward_mean": 0.1 * step}, step=step)
        assert time.monotonic() - start < 15 and tracker.offline and during.startswith("offline-")
        server.start()
        clock.now += 1000
        tracker.end_run(during)
        tracker.end_run(before)
        tracker.end_run(parent)
        assert not tracker.offline and tracker.pending == 0
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("htgrpo").experiment_id
        runs = {r.info.run_name: r for r in client.search_runs([exp])}
        assert [m.step for m in client.get_metric_history(before, "reward_mean")] == [1, 2]
        replayed = runs["round-2-global"]
        assert replayed.data.tags[PARENT_TAG] == parent and replayed.info.status == "FINISHED"
        hist = client.get_metric_history(replayed.info.run_id, "reward_mean")
        assert [(m.step, round(m.value, 3)) for m in hist] == [(3, 0.3), (4, 0.4)]
    finally:
        server.stop()


def test_promotion_is_gated_by_the_base_the_champion_and_the_protocol(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(tracking(uri, tmp_path), tmp_path)
    ids = log_a_pipeline(tracker, tmp_path)
    client = MlflowClient(uri)
    proto = {"split": "test", "seed": 1234, "images_per_prompt": 8}

    def reg(run, value, base, margin=0.02, protocol=proto):
        return tracker.register(
            f"s3://b/{run}", ids["parent"], {"overall": value}, base=base, margin=margin, protocol=protocol
        )

    # a first run that is worse than its base: a candidate, never the champion (there was no champion at all)
    worse = reg("r1", 0.512, base=0.514)
    assert worse["version"] == 1 and not worse["promoted"]
    assert "does not beat its base 0.5140" in worse["reason"]
    assert str(client.get_model_version_by_alias("tiny", "candidate").version) == "1"
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias("tiny", "champion")
    # better than its base, but only within the margin
    assert not reg("r2", 0.530, base=0.514)["promoted"]
    # beyond the margin, no champion yet: promoted
    first = reg("r3", 0.550, base=0.514)
    assert first["promoted"] and "there was no champion" in first["reason"]
    tags = client.get_model_version("tiny", first["version"]).tags
    assert (
        tags["eval.split"] == "test"
        and tags["eval.images_per_prompt"] == "8"
        and "promoted" in tags["promotion"]
    )
    # beats its own base, but not the champion by the margin
    near = reg("r4", 0.560, base=0.40)
    assert not near["promoted"] and "does not beat the champion (version 3, 0.5500)" in near["reason"]
    # a champion evaluated with another protocol cannot be compared with
    other = reg("r5", 0.90, base=0.40, protocol={**proto, "images_per_prompt": 4})
    assert not other["promoted"] and "evaluated otherwise" in other["reason"]
    # beats both by the margin
    best = reg("r6", 0.60, base=0.50)
    assert best["promoted"] and best["previous_champion"] == {"version": 3, "value": 0.55}
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == str(best["version"])
