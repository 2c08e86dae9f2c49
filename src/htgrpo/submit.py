"""Submit the compiled pipeline to a Kubeflow Pipelines server: one run, as the Helm chart's CronJob does.

Everything is checked before a server is contacted: the package (a local file or an ``s3://`` URI) must parse
strictly as KFP IR; every ``KEY=VALUE`` parameter must be a root input of the pipeline and is converted to that
input's type (a bad one is an error naming the key); inputs without a default must be given. The parameters are
then checked as the pipeline's prepare_data step will check them (``check_run_parameters``: the run name, and
config, overrides, shards and the URIs through the configuration models), and the run's name must be a valid run
name (``htgrpo.config.check_run_name``), since it names the run's directory in the store. A GPU node pool, when
given, replaces the accelerator, node selector and tolerations that were compiled into the GPU steps, so a
``helm upgrade`` can move training to another pool without recompiling.

With ``dry_run`` the plan is returned (and printed by ``htgrpo pipeline submit --dry-run``) and nothing else
happens. Otherwise the run is created with ``kfp.Client(host=..., existing_token=...)`` and
``create_run_from_pipeline_package``; the token is read from the projected service-account token file
(``KF_PIPELINES_SA_TOKEN_PATH``, default ``/var/run/secrets/kubeflow/pipelines/token``) and never printed.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from htgrpo.config import check_run_name
from htgrpo.errors import HtgrpoError

DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TYPE_NAMES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}


class SubmitError(HtgrpoError, ValueError):
    """The package, a parameter or the node pool is invalid, or the server refused the run."""


@dataclass(frozen=True)
class GpuPool:
    """Where the GPU steps run: the accelerator resource and count, node labels and tolerations."""

    resource_name: str = "nvidia.com/gpu"
    count: int = 1
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any, source: str = "--gpu-pool") -> GpuPool:
        """From ``{resourceName, count, nodeSelector, tolerations}`` (the Helm values' ``gpu`` section)."""
        if not isinstance(data, dict):
            raise SubmitError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {"resourceName", "count", "nodeSelector", "tolerations"}
        if extra := sorted(set(data) - known):
            raise SubmitError(f"{source}: unknown key(s) {extra}; allowed {sorted(known)}")
        name = data.get("resourceName", cls.resource_name)
        if not isinstance(name, str) or "/" not in name:
            raise SubmitError(
                f"{source}: resourceName must be an extended resource like nvidia.com/gpu (got {name!r})"
            )
        count = data.get("count", cls.count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SubmitError(f"{source}: count must be an integer of at least 1 (got {count!r})")
        selector = data.get("nodeSelector", {}) or {}
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise SubmitError(
                f"{source}: nodeSelector must map label keys to string values (got {selector!r})"
            )
        tolerations = data.get("tolerations", []) or []
        if not isinstance(tolerations, list):
            raise SubmitError(f"{source}: tolerations must be a list (got {tolerations!r})")
        for i, tol in enumerate(tolerations):
            if not isinstance(tol, dict):
                raise SubmitError(f"{source}: tolerations[{i}] must be an object (got {tol!r})")
            if bad := sorted(set(tol) - TOLERATION_KEYS):
                raise SubmitError(f"{source}: tolerations[{i}]: unknown key(s) {bad}")
            if tol.get("operator", "Equal") not in ("Equal", "Exists"):
                raise SubmitError(f"{source}: tolerations[{i}].operator must be Equal or Exists")
        return cls(name, count, dict(selector), [dict(t) for t in tolerations])

    @classmethod
    def from_json(cls, text: str, source: str = "--gpu-pool") -> GpuPool:
        try:
            return cls.from_dict(json.loads(text), source)
        except json.JSONDecodeError as exc:
            raise SubmitError(f"{source}: not valid JSON ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "resourceName": self.resource_name,
            "count": self.count,
            "nodeSelector": self.node_selector,
            "tolerations": self.tolerations,
        }


@dataclass
class SubmitPlan:
    """What would be (or was) submitted."""

    package: str
    pipeline: str
    experiment: str
    run_name: str
    arguments: dict[str, Any]
    defaults: dict[str, Any]
    host: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    gpu_pool: GpuPool | None = None
    gpu_executors: list[str] = field(default_factory=list)
    config_note: str | None = None
    """Set when the parameters could be checked only in part (the config file is not on this machine)."""
    documents: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "pipeline": self.pipeline,
            "experiment": self.experiment,
            "run_name": self.run_name,
            "arguments": self.arguments,
            "defaults": self.defaults,
            "host": self.host,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "gpu_pool": self.gpu_pool.to_dict() if self.gpu_pool else None,
            "gpu_executors": self.gpu_executors,
            **({"config_note": self.config_note} if self.config_note else {}),
        }

    def package_text(self) -> str:
        """The package as submitted (with the GPU pool applied)."""
        return yaml.safe_dump_all(self.documents, sort_keys=False)


# --- the package ----------------------------------------------------------------------------------------------


def read_package(source: str | Path, *, s3_endpoint: str | None = None) -> list[dict[str, Any]]:
    """The package's YAML documents (PipelineSpec, then an optional PlatformSpec), strictly validated.

    ``source`` is a local path or ``s3://BUCKET/KEY`` (boto3; credentials from the environment or the pod's role,
    endpoint from ``s3_endpoint`` or ``AWS_ENDPOINT_URL``).
    """
    source = str(source)
    if source.startswith("s3://"):
        from htgrpo.config import StorageConfig
        from htgrpo.storage import open_store

        bucket, _, key = source[len("s3://") :].partition("/")
        if not bucket or not key:
            raise SubmitError(f"--package {source}: expected s3://BUCKET/KEY")
        store = open_store(f"s3://{bucket}", StorageConfig(uri=f"s3://{bucket}", endpoint_url=s3_endpoint))
        text = store.get_bytes(key).decode()
    else:
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise SubmitError(f"--package {source}: no such file (compile it with `htgrpo pipeline compile`)")
        text = path.read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SubmitError(f"{source}: not valid YAML ({exc})") from None
    _validate_documents(docs, source)
    return docs


def _validate_documents(docs: list[dict[str, Any]], source: str) -> None:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise SubmitError(
            f"{source}: not a compiled KFP pipeline (no root); compile it with `htgrpo pipeline compile`"
        )
    if len(docs) > 2:
        raise SubmitError(
            f"{source}: expected a PipelineSpec and at most one PlatformSpec, got {len(docs)} documents"
        )
    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        if len(docs) == 2:
            from kfp.kubernetes import kubernetes_executor_config_pb2 as kpb

            json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
            # each executor's Kubernetes settings are a free-form Struct in PlatformSpec: decode them too
            executors = docs[1].get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
            for conf in executors.get("executors", {}).values():
                json_format.ParseDict(conf, kpb.KubernetesExecutorConfig())
    except json_format.ParseError as exc:
        raise SubmitError(f"{source}: not a valid KFP pipeline spec: {exc}") from None


def pipeline_inputs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Root input parameters: name -> {parameterType, defaultValue?, isOptional?}."""
    return dict(docs[0].get("root", {}).get("inputDefinitions", {}).get("parameters", {}))


# --- parameters -----------------------------------------------------------------------------------------------


def _coerce(key: str, raw: str, ptype: str) -> Any:
    want = TYPE_NAMES.get(ptype, ptype)
    err = SubmitError(f"parameter {key}: expected {want} ({ptype}), got {raw!r}")
    if ptype == "STRING":
        return raw
    if ptype == "NUMBER_INTEGER":
        try:
            return int(raw.strip())
        except ValueError:
            raise err from None
    if ptype == "NUMBER_DOUBLE":
        try:
            return float(raw.strip())
        except ValueError:
            raise err from None
    if ptype == "BOOLEAN":
        if raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise err
    if ptype in ("LIST", "STRUCT"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise err from None
        if not isinstance(value, list if ptype == "LIST" else dict):
            raise err
        return value
    raise SubmitError(f"parameter {key}: the pipeline declares an unsupported type {ptype}")


def check_params(inputs: dict[str, dict[str, Any]], items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> typed arguments; every key must be a root input, every required input given."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SubmitError(f"parameter {item!r}: expected KEY=VALUE, e.g. shards=4")
        if key not in inputs:
            close = difflib.get_close_matches(key, inputs, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SubmitError(
                f"parameter {key}: not an input of the pipeline{hint}; it takes {', '.join(sorted(inputs))}"
            )
        if key in args:
            raise SubmitError(f"parameter {key}: given twice")
        args[key] = _coerce(key, raw, inputs[key].get("parameterType", "STRING"))
    missing = sorted(
        k
        for k, spec in inputs.items()
        if k not in args and not spec.get("isOptional") and "defaultValue" not in spec
    )
    if missing:
        raise SubmitError(f"parameter(s) {', '.join(missing)}: required by the pipeline and not given")
    return args


# --- GPU placement --------------------------------------------------------------------------------------------


def apply_gpu_pool(docs: list[dict[str, Any]], pool: GpuPool) -> list[str]:
    """Rewrite every executor compiled with an accelerator (the GPU steps) to ``pool``; returns their names."""
    executors = docs[0].get("deploymentSpec", {}).get("executors", {})
    gpu = sorted(
        n for n, ex in executors.items() if ex.get("container", {}).get("resources", {}).get("accelerator")
    )
    if not gpu:
        return []
    if len(docs) == 1:
        docs.append({"platforms": {"kubernetes": {"deploymentSpec": {"executors": {}}}}})
    platform = (
        docs[1]
        .setdefault("platforms", {})
        .setdefault("kubernetes", {})
        .setdefault("deploymentSpec", {})
        .setdefault("executors", {})
    )
    for name in gpu:
        acc = executors[name]["container"]["resources"]["accelerator"]
        count = str(pool.count)
        acc.update({"resourceType": pool.resource_name, "resourceCount": count})
        if "type" in acc or "count" in acc:  # the legacy fields kfp still writes beside the new ones
            acc.update({"type": pool.resource_name, "count": count})
        conf = platform.setdefault(name, {})
        conf.pop("nodeSelector", None)
        conf.pop("tolerations", None)
        if pool.node_selector:
            conf["nodeSelector"] = {"labels": dict(sorted(pool.node_selector.items()))}
        if pool.tolerations:
            conf["tolerations"] = [dict(t) for t in pool.tolerations]
    return gpu


# --- plan and submit ------------------------------------------------------------------------------------------


def default_run_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def compiled_rounds(docs: list[dict[str, Any]]) -> int:
    """The RL rounds compiled into the pipeline (prepare_data's constant ``rounds`` input; 1 when absent)."""
    task = docs[0].get("root", {}).get("dag", {}).get("tasks", {}).get("prepare-data", {})
    value = task.get("inputs", {}).get("parameters", {}).get("rounds", {}).get("runtimeValue", {})
    try:
        return int(value.get("constant", 1))
    except (TypeError, ValueError):
        return 1


def check_run_parameters(
    inputs: dict[str, dict[str, Any]], args: dict[str, Any], rounds: int = 1
) -> str | None:
    """Check the run's parameters (given or defaulted) as the pipeline's prepare_data step will: ``run_name``,
    then ``config``, ``overrides``, ``shards``, ``storage_uri`` and ``tracking_uri`` through the same
    configuration models (``htgrpo.pipeline.steps.resolve_config``). A pipeline without a ``config`` input is
    not checked. When ``config`` names a file that is not on this machine, the overrides and parameters are
    checked against the default configuration and shards only for being at least 1; the returned note says so.
    """
    from htgrpo.errors import ConfigError
    from htgrpo.pipeline.steps import is_inline_config, resolve_config

    if "config" not in inputs:
        return None
    values = {k: spec["defaultValue"] for k, spec in inputs.items() if "defaultValue" in spec}
    values.update(args)
    if values.get("run_name"):
        check_run_name(values["run_name"], "parameter run_name")
    config = str(values.get("config", ""))
    shards = int(values.get("shards", 1))
    note = None
    inline_source = "config parameter (inline YAML)"
    if not is_inline_config(config) and not Path(config).is_file():
        note = (
            f"config {config!r} is not on this machine: the overrides were checked against the default "
            "configuration, shards only for being at least 1"
        )
        if shards < 1:
            raise SubmitError(f"parameter shards: {shards} rollout shards; use at least 1")
        inline_source = f"the default configuration (config {config!r} is not on this machine)"
        config, shards = "{}", 1
    try:
        resolve_config(
            config,
            [str(o) for o in values.get("overrides") or []],
            rounds=rounds,
            shards=shards,
            storage_uri=str(values.get("storage_uri") or ""),
            tracking_uri=str(values.get("tracking_uri") or ""),
            inline_source=inline_source,
        )
    except ConfigError as exc:
        raise SubmitError(f"parameters: {exc}") from None
    return note


def plan_submission(
    package: str | Path,
    *,
    experiment: str,
    params: Iterable[str] = (),
    run_name: str | None = None,
    run_name_prefix: str | None = None,
    host: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    gpu_pool: GpuPool | None = None,
    s3_endpoint: str | None = None,
) -> SubmitPlan:
    """Load and check everything; contacts no KFP server (an ``s3://`` package is downloaded)."""
    if not experiment:
        raise SubmitError("--experiment must not be empty")
    docs = read_package(package, s3_endpoint=s3_endpoint)
    inputs = pipeline_inputs(docs)
    args = check_params(inputs, params)
    name = run_name or default_run_name(run_name_prefix or experiment)
    # with an empty run_name parameter, the KFP run's name names the run's directory in the store
    if run_name:
        check_run_name(name, "--run-name")
    else:
        source = "--run-name-prefix" if run_name_prefix else "--experiment"
        check_run_name(name, f"the default run name ({source} + '-YYYYmmdd-HHMMSS'; pass --run-name-prefix)")
    config_note = check_run_parameters(inputs, args, compiled_rounds(docs))
    gpu_execs = apply_gpu_pool(docs, gpu_pool) if gpu_pool else []
    if gpu_pool:
        _validate_documents(docs, f"{package} (with the GPU pool applied)")
    return SubmitPlan(
        package=str(package),
        pipeline=docs[0].get("pipelineInfo", {}).get("name", ""),
        experiment=experiment,
        run_name=name,
        arguments=args,
        defaults={
            k: v["defaultValue"] for k, v in sorted(inputs.items()) if k not in args and "defaultValue" in v
        },
        host=host,
        namespace=namespace,
        service_account=service_account,
        gpu_pool=gpu_pool,
        gpu_executors=gpu_execs,
        config_note=config_note,
        documents=docs,
    )


def token_path() -> Path:
    return Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH)


def read_token(path: str | Path | None = None) -> str | None:
    """The projected service-account token (``None`` when the file is absent: e.g. a port-forwarded server)."""
    p = Path(path) if path else token_path()
    if not p.is_file():
        return None
    token = p.read_text().strip()
    return token or None


def submit(plan: SubmitPlan, *, token_file: str | Path | None = None) -> dict[str, Any]:
    """Create the run on the KFP server; returns ``{run_id, run_name, experiment, host}``."""
    import kfp

    token = read_token(token_file)
    client = kfp.Client(host=plan.host or None, namespace=plan.namespace or "kubeflow", existing_token=token)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "pipeline.yaml"
        package.write_text(plan.package_text())
        try:
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=plan.arguments,
                run_name=plan.run_name,
                experiment_name=plan.experiment,
                namespace=plan.namespace or None,
                service_account=plan.service_account or None,
            )
        except Exception as exc:  # noqa: BLE001 - the server's answer, reported without a traceback
            raise SubmitError(
                f"KFP at {plan.host or 'the in-cluster endpoint'} refused the run: {type(exc).__name__}: {exc}"
            ) from exc
    return {
        "run_id": result.run_id,
        "run_name": plan.run_name,
        "experiment": plan.experiment,
        "host": plan.host,
        "authenticated": token is not None,
    }


__all__ = [
    "DEFAULT_TOKEN_PATH",
    "GpuPool",
    "SubmitError",
    "SubmitPlan",
    "apply_gpu_pool",
    "check_params",
    "pipeline_inputs",
    "plan_submission",
    "read_package",
    "read_token",
    "submit",
]
