"""MLflow lineage for training runs and pipeline runs, which never stops training.

Run tree (one MLflow experiment, ``tracking.experiment``)::

    pipeline run  (parent; params = the full config, tags kfp.run_id / kfp.run_name, dataset inputs)
    ├── round-1-rollout / round-1-score / round-1-global / round-1-structure / round-1-refinement
    ├── ... one nested run per round and stage (metrics by RL step, sample grids, checkpoint URIs as tags)
    └── evaluate-base / evaluate-trained (benchmark metrics)

The final checkpoint becomes a version of the registered model ``tracking.registered_model`` (its source is the
checkpoint URI, or for a local checkpoint a copy in the run's artifacts; tag ``checkpoint_uri``) with alias ``candidate``; the alias ``champion`` moves to it only when its evaluation beats the
current champion on ``tracking.champion_metric``.

The embedded default is a sqlite file with local artifacts (``sqlite:///mlflow.db``, no server). When MLflow
cannot be reached, the ``Tracker`` warns once per outage and training goes on: every call (run, metrics, params,
tags, images, datasets, registration) is written as a JSON line into ``tracking.fallback_dir`` and kept. MLflow
is tried again after ``tracking.retry_backoff_s`` (doubled after each failed try, up to
``tracking.retry_backoff_max_s``; a server is first asked for ``/health`` with a short timeout, so a try costs
training at most a second or two); when it answers, the kept calls are replayed in order, runs created offline
get their MLflow ids, and logging goes on as before. Calls still kept when the process ends stay in the JSON
lines file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from htgrpo.config import Config, TrackingConfig, config_to_dict

PARENT_TAG = "mlflow.parentRunId"
OFFLINE_PREFIX = "offline-"
PROBE_TIMEOUT_S = 2.0
"""Timeout of the ``/health`` request that tells whether a tracking server is back."""
log = logging.getLogger(__name__)


def artifact_root_for(tracking_uri: str, artifact_root: str | None) -> str | None:
    """Absolute artifact root of an embedded sqlite store: as given, else ``mlruns/`` beside the database."""
    if not tracking_uri.startswith("sqlite:///"):
        return artifact_root
    if artifact_root:
        return artifact_root if "://" in artifact_root else str(Path(artifact_root).resolve())
    return str(Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlruns")


def flatten(data: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, sep, name))
        else:
            out[name] = value
    return out


def numeric_metrics(data: Mapping[str, Any], sep: str = "/") -> dict[str, float]:
    """The finite numbers of a (nested) record, keys joined by ``/`` (bools and None left out)."""
    out = {}
    for key, value in flatten(data, sep).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker:
    """Failure-tolerant MLflow client; see the module docstring. All ids are MLflow run ids (or offline ids)."""

    clock = staticmethod(time.monotonic)
    """When the next try is due (tests replace it)."""

    def __init__(self, cfg: TrackingConfig, local_dir: str | Path = ".") -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.fallback = Path(local_dir) / cfg.fallback_dir
        self.offline = False
        """MLflow failed and has not answered since; calls are kept locally and replayed when it does."""
        self.outages = 0
        self.replayed = 0
        self._warned_this_outage = False
        self._retry_at = 0.0
        self._backoff = cfg.retry_backoff_s
        self._pending: list[dict[str, Any]] = []
        self._ids: dict[str, str] = {}  # offline run id -> MLflow run id, once replayed
        self._client = None
        self._experiment_id: str | None = None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.http_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(math.ceil(cfg.http_timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

    # --- plumbing -------------------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.cfg.tracking_uri, registry_uri=self.cfg.tracking_uri
            )
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.cfg.experiment)
            if exp is None:
                location = artifact_root_for(self.cfg.tracking_uri, self.cfg.artifact_root)
                if location and "://" not in location:
                    location = Path(location).as_uri()
                self._experiment_id = self.client.create_experiment(
                    self.cfg.experiment, artifact_location=location
                )
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    @property
    def pending(self) -> int:
        """Calls kept during the current outage, not yet replayed."""
        return len(self._pending)

    def _resolve(self, run_id: str | None) -> str | None:
        """The MLflow id of a run created offline and replayed since (else the id as given)."""
        return self._ids.get(run_id, run_id) if run_id else run_id

    def _record(self, kind: str, run_id: str | None, data: Any, replay: bool = True) -> None:
        """Keep one call: a JSON line in the fallback file (an image as a .npy beside it) and, unless ``replay``
        is false, in memory for the replay."""
        self.fallback.mkdir(parents=True, exist_ok=True)
        if kind == "image":
            import numpy as np

            data = dict(data)
            path = self.fallback / "images" / f"{uuid.uuid4().hex[:12]}.npy"
            path.parent.mkdir(exist_ok=True)
            np.save(path, np.asarray(data.pop("array")))
            data["file"] = str(path)
        line = {"time": time.time(), "kind": kind, "run_id": run_id, "data": data}
        with (self.fallback / "tracking.jsonl").open("a") as fh:
            fh.write(json.dumps(line, default=str) + "\n")
        if replay:
            self._pending.append(line)

    def _went_offline(self, kind: str, exc: BaseException) -> None:
        self.offline = True
        now = self.clock()
        self._retry_at = now + self._backoff
        wait = self._backoff
        self._backoff = min(self._backoff * 2, self.cfg.retry_backoff_max_s)
        if not self._warned_this_outage:
            self.outages += 1
            self._warned_this_outage = True
            warnings.warn(
                f"MLflow at {self.cfg.tracking_uri} failed ({kind}: {type(exc).__name__}: {str(exc)[:300]}); "
                f"training goes on, tracking data is kept in {self.fallback / 'tracking.jsonl'} and sent when "
                f"MLflow answers again (next try in {wait:.0f} s)",
                RuntimeWarning,
                stacklevel=4,
            )

    def _reachable(self) -> bool:
        """A short /health request for a server; other stores (sqlite) are simply tried."""
        uri = self.cfg.tracking_uri
        if not uri.startswith(("http://", "https://")):
            return True
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S) as r:
                return 200 <= r.status < 300
        except Exception:  # noqa: BLE001 - any failure means: not back yet
            return False

    def _try_reconnect(self) -> bool:
        """When a try is due and MLflow answers, replay the kept calls; True when online again."""
        if self.clock() < self._retry_at:
            return False
        if not self._reachable():
            self._retry_at = self.clock() + self._backoff
            self._backoff = min(self._backoff * 2, self.cfg.retry_backoff_max_s)
            return False
        done = 0
        try:
            while self._pending:
                self._replay_one(self._pending[0])
                self._pending.pop(0)
                done += 1
        except Exception as exc:  # noqa: BLE001 - still failing: stay offline, keep the rest
            self.replayed += done
            self._went_offline("replay", exc)
            return False
        self.replayed += done
        self.offline = False
        self._warned_this_outage = False
        self._backoff = self.cfg.retry_backoff_s
        log.warning(
            "MLflow at %s answers again: replayed %d call(s) kept while it was unreachable",
            self.cfg.tracking_uri,
            done,
        )
        with (self.fallback / "tracking.jsonl").open("a") as fh:
            fh.write(
                json.dumps({"time": time.time(), "kind": "replayed", "calls": done, "ids": self._ids}) + "\n"
            )
        return True

    def _call(self, kind: str, run_id: str | None, data: Any, fn) -> Any:
        """Run ``fn(run_id)`` against MLflow; on failure warn (once per outage), go offline and keep ``data``
        locally. ``run_id`` is resolved after a replay, so a run created offline is logged to under its MLflow
        id."""
        if not self.enabled:
            return None
        if self.offline and not self._try_reconnect():
            self._record(kind, run_id, data)
            return None
        run_id = self._resolve(run_id)
        if run_id is not None and run_id.startswith(OFFLINE_PREFIX):
            # a run created offline in another process (e.g. an earlier pipeline step): no MLflow id to log to
            self._record(kind, run_id, data, replay=False)
            return None
        try:
            return fn(run_id)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self._went_offline(kind, exc)
            self._record(kind, run_id, data)
            return None

    def _replay_one(self, line: dict[str, Any]) -> None:
        """Send one kept call to MLflow, with its original time."""
        from mlflow.entities import Metric, Param, RunTag

        kind, data, ms = line["kind"], line["data"], int(line["time"] * 1000)
        run_id = self._resolve(line["run_id"])
        if run_id is not None and run_id.startswith(OFFLINE_PREFIX):
            return  # created by another process: nothing here knows its MLflow id
        client = self.client
        if kind == "start_run":
            tags = dict(data["tags"])
            parent = self._resolve(data.get("parent"))
            if parent and not parent.startswith(OFFLINE_PREFIX):
                tags[PARENT_TAG] = parent
            run = client.create_run(self.experiment_id(), start_time=ms, run_name=data["name"], tags=tags)
            self._ids[data["offline_id"]] = run.info.run_id
        elif kind == "end_run":
            client.set_terminated(run_id, status=data, end_time=ms)
        elif kind == "params":
            items = [Param(k[:250], str(v)[:6000]) for k, v in sorted(data.items())]
            for lo in range(0, len(items), 100):
                client.log_batch(run_id, params=items[lo : lo + 100], synchronous=True)
        elif kind == "metrics":
            items = [Metric(k, v, ms, data["step"] or 0) for k, v in sorted(data["metrics"].items())]
            for lo in range(0, len(items), 1000):
                client.log_batch(run_id, metrics=items[lo : lo + 1000], synchronous=True)
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in data.items()])
        elif kind == "image":
            import numpy as np

            image = np.load(data["file"])
            client.log_image(run_id, image, key=data["key"], step=data["step"], synchronous=True)
        elif kind == "artifacts":
            for f in data["files"]:
                client.log_artifact(run_id, f, data["artifact_path"])
        elif kind == "dataset":
            self._log_dataset(run_id, data["name"], data["source"], data["digest"], data["context"])
        elif kind == "register":
            uri = data["checkpoint_uri"]
            if run_id is not None or ("://" in uri and not uri.startswith("file://")):
                self._register(uri, run_id, data["metrics"], {"name": self.cfg.registered_model})

    # --- runs -----------------------------------------------------------------------------------------------
    def start_run(
        self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str | None:
        """Create a run (nested under ``parent_run_id`` when given); returns its id (an offline id if MLflow
        is unreachable, None when tracking is off)."""
        if not self.enabled:
            return None
        offline_id = f"{OFFLINE_PREFIX}{uuid.uuid4().hex[:12]}"

        def create(_: None) -> str:
            all_tags = dict(tags or {})
            parent = self._resolve(parent_run_id)  # after a replay, a parent created offline has its id
            if parent and not parent.startswith(OFFLINE_PREFIX):
                all_tags[PARENT_TAG] = parent
            run = self.client.create_run(self.experiment_id(), run_name=name, tags=all_tags)
            return run.info.run_id

        data = {"name": name, "tags": dict(tags or {}), "parent": parent_run_id, "offline_id": offline_id}
        run_id = self._call("start_run", None, data, create)
        return run_id or offline_id

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id:
            self._call("end_run", run_id, status, lambda rid: self.client.set_terminated(rid, status=status))

    def start_pipeline_run(self, cfg: Config, name: str, tags: Mapping[str, str] | None = None) -> str | None:
        """The parent run of a pipeline run: every config key as a param."""
        run_id = self.start_run(name, tags={"htgrpo.kind": "pipeline", **(tags or {})})
        self.log_params(run_id, config_to_dict(cfg))
        return run_id

    # --- data -----------------------------------------------------------------------------------------------
    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        if not run_id:
            return
        from mlflow.entities import Param

        flat = {
            k: json.dumps(v) if isinstance(v, list | tuple | dict) else str(v)
            for k, v in flatten(params).items()
        }
        items = [Param(k[:250], v[:6000]) for k, v in sorted(flat.items())]

        def log(rid: str) -> None:
            for lo in range(0, len(items), 100):
                self.client.log_batch(rid, params=items[lo : lo + 100], synchronous=True)

        self._call("params", run_id, flat, log)

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Every finite number of a (nested) record, keys joined with ``/``, at ``step``."""
        if not run_id:
            return
        from mlflow.entities import Metric

        values = numeric_metrics(metrics)
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in sorted(values.items())]

        def log(rid: str) -> None:
            for lo in range(0, len(items), 1000):
                self.client.log_batch(rid, metrics=items[lo : lo + 1000], synchronous=True)

        self._call("metrics", run_id, {"step": step, "metrics": values}, log)

    def set_tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        if not run_id:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("tags", run_id, dict(tags), lambda rid: self.client.log_batch(rid, tags=items))

    def log_image(self, run_id: str | None, image, key: str, step: int = 0) -> None:
        """A sample grid (HxWx3 uint8 array or PIL image), shown per step in the MLflow UI."""
        if not run_id or not self.cfg.log_images:
            return
        self._call(
            "image",
            run_id,
            {"key": key, "step": step, "array": image},
            lambda rid: self.client.log_image(rid, image, key=key, step=step, synchronous=True),
        )

    def log_artifacts(
        self, run_id: str | None, paths: Iterable[str | Path], artifact_path: str | None = None
    ) -> None:
        """Local files as run artifacts (under ``artifact_path`` when given)."""
        if not run_id:
            return
        files = [str(Path(p)) for p in paths]

        def log(rid: str) -> None:
            for f in files:
                self.client.log_artifact(rid, f, artifact_path)

        self._call("artifacts", run_id, {"files": files, "artifact_path": artifact_path}, log)

    def log_dataset(
        self, run_id: str | None, name: str, source: str, digest: str, context: str = "training"
    ) -> None:
        """Dataset lineage without loading the data: name, source URI and content digest."""
        if not run_id:
            return
        data = {"name": name, "source": source, "digest": digest, "context": context}
        self._call("dataset", run_id, data, lambda rid: self._log_dataset(rid, name, source, digest, context))

    def _log_dataset(self, run_id: str, name: str, source: str, digest: str, context: str) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        src = _dataset_source(source)
        ds = MetaDataset(source=src, name=name, digest=digest[:36])
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[tag])])

    # --- registry -------------------------------------------------------------------------------------------
    def register(
        self,
        checkpoint_uri: str,
        run_id: str | None,
        metrics: Mapping[str, float],
        *,
        base: float | None = None,
        margin: float = 0.0,
        protocol: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register ``checkpoint_uri`` as a new model version with alias ``candidate``, always. Move ``champion``
        to it only when its ``tracking.champion_metric`` beats ``base`` (the model it was trained from, on the
        same evaluation) by more than ``margin``, and beats the current champion by more than ``margin``, the
        champion having been evaluated with the same ``protocol`` (split, seed, images per prompt; stored as
        tags). ``result["reason"]`` says why it was or was not promoted."""
        name, key = self.cfg.registered_model, self.cfg.champion_metric
        value = metrics.get(key)
        result: dict[str, Any] = {
            "name": name,
            "version": None,
            "promoted": False,
            "metric": key,
            "value": value,
            "base": base,
            "margin": margin,
        }
        if value is None:
            warnings.warn(
                f"evaluation has no metric {key!r}; the model is not promoted", RuntimeWarning, stacklevel=2
            )

        data = {"checkpoint_uri": checkpoint_uri, "metrics": dict(metrics)}
        out = self._call(
            "register",
            run_id,
            data,
            lambda rid: self._register(checkpoint_uri, rid, metrics, result, dict(protocol or {})),
        )
        return out or result

    def _register(
        self,
        checkpoint_uri: str,
        run_id: str | None,
        metrics: Mapping[str, float],
        result: dict[str, Any],
        protocol: dict[str, Any],
    ) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        name, key = self.cfg.registered_model, self.cfg.champion_metric
        value = metrics.get(key)
        base, margin = result["base"], float(result["margin"])
        client = self.client
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="HT-GRPO checkpoints (source = checkpoint URI)")
        tags = {
            "checkpoint_uri": checkpoint_uri,
            **{f"metric.{k}": str(v) for k, v in metrics.items()},
            **{f"eval.{k}": str(v) for k, v in protocol.items()},
        }
        valid_run = run_id if run_id and not run_id.startswith(OFFLINE_PREFIX) else None
        source = checkpoint_uri
        if "://" not in checkpoint_uri or checkpoint_uri.startswith("file://"):
            # a local checkpoint is not reachable by whoever reads the registry: copy it into the run's
            # artifacts (MLflow accepts local sources only inside the run's artifact directory)
            if valid_run is None:
                raise RuntimeError("a local checkpoint can only be registered with a run to hold it")
            local = Path(checkpoint_uri.removeprefix("file://"))
            client.log_artifacts(valid_run, str(local), artifact_path="checkpoint")
            source = client.get_run(valid_run).info.artifact_uri.rstrip("/") + "/checkpoint"
        mv = client.create_model_version(name, source=source, run_id=valid_run, tags=tags)
        client.set_registered_model_alias(name, "candidate", mv.version)
        result["version"] = int(mv.version)
        reasons: list[str] = []
        if value is None:
            reasons.append(f"the evaluation has no {key!r}")
        elif base is not None and not float(value) > base + margin:
            reasons.append(
                f"{key} {float(value):.4f} does not beat its base {base:.4f} by more than {margin:.4f}"
            )
        try:
            champ = client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            champ = None
        if champ is not None:
            best = float(champ.tags.get(f"metric.{key}", "-inf"))
            result["previous_champion"] = {"version": int(champ.version), "value": best}
            theirs = {k: champ.tags.get(f"eval.{k}") for k in protocol}
            if any(theirs[k] != str(v) for k, v in protocol.items()):
                reasons.append(f"the champion (version {champ.version}) was evaluated otherwise ({theirs})")
            elif value is not None and not float(value) > best + margin:
                reasons.append(
                    f"{key} {float(value):.4f} does not beat the champion (version {champ.version}, {best:.4f}) "
                    f"by more than {margin:.4f}"
                )
        if reasons:
            result["reason"] = "not promoted: " + "; ".join(reasons)
        else:
            client.set_registered_model_alias(name, "champion", mv.version)
            result["promoted"] = True
            result["reason"] = "promoted: " + (
                f"{key} {float(value):.4f} beats its base"
                + (f" {base:.4f}" if base is not None else " (none given)")
                + (" and the champion" if champ is not None else ", and there was no champion")
                + f" by more than {margin:.4f}"
            )
        client.set_model_version_tag(name, mv.version, "promotion", result["reason"])
        return result


def _dataset_source(source: str):
    """The MLflow dataset source of a URI (s3://, http(s)://, file:// or a local path)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if "://" not in source:
        source = Path(source).resolve().as_uri()
    elif source.startswith("file://") and not source.startswith("file:///"):
        source = Path(source.removeprefix("file://")).resolve().as_uri()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # "can be interpreted in multiple ways": all the same class
        return resolve_dataset_source(source)


def digest_rows(rows: Iterable[Any]) -> str:
    """Content digest of a prompt set (JSON rows, in order)."""
    import hashlib

    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


__all__ = ["Tracker", "digest_rows", "flatten", "numeric_metrics"]
