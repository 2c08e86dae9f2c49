"""The HT-GRPO Kubeflow pipeline.

prepare_data -> evaluate(base) in parallel with ROUNDS x [plan_shards -> ParallelFor over rollout shards -> score_rewards ->
train_global -> train_structure -> train_refinement] -> evaluate(trained) -> register.

The number of rounds is fixed at compile time; the shard fan-out is a run parameter (``shards``). The images
(``pipeline.image``, the CPU image, for prepare_data, plan_shards and register; ``pipeline.gpu_image``, the CUDA
image, for rollout, scoring, the stages and evaluation), node pools (accelerator type and limit, node selector,
tolerations) per kind of step and the Kubernetes secrets come from the ``pipeline`` section of the configuration
used to compile. Compile with::

    htgrpo pipeline compile --rounds 2 --out pipelines/htgrpo.yaml

Importing this module builds the default pipeline (``htgrpo_pipeline``) and has no other side effect, so
``kfp dsl compile --py pipelines/htgrpo.py --function htgrpo_pipeline`` works too.
"""

import sys
from pathlib import Path

from kfp import dsl, kubernetes

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the components/ folders live beside this one
    sys.path.insert(0, str(ROOT))

from components.evaluate.component import evaluate  # noqa: E402
from components.plan_shards.component import plan_shards  # noqa: E402
from components.prepare_data.component import prepare_data  # noqa: E402
from components.register.component import register  # noqa: E402
from components.rollout.component import rollout  # noqa: E402
from components.score_rewards.component import score_rewards  # noqa: E402
from components.train_global.component import train_global  # noqa: E402
from components.train_refinement.component import train_refinement  # noqa: E402
from components.train_structure.component import train_structure  # noqa: E402
from htgrpo.config import PipelineConfig, StepResources  # noqa: E402

DEFAULT_ROUNDS = 2
S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_KEYS = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}
CPU_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "PYTHONUNBUFFERED": "1"}


def _common(task: dsl.PipelineTask, settings: PipelineConfig, name: str) -> dsl.PipelineTask:
    """The CPU image (``_place`` swaps in the CUDA image for heavy steps), env, no caching (outputs live in the
    store), and credentials from secrets (never in the YAML)."""
    task.set_container_image(settings.image)
    task.set_caching_options(False)
    task.set_display_name(name)
    for key, value in CPU_ENV.items():
        task.set_env_variable(key, value)
    kubernetes.use_secret_as_env(task, settings.s3_secret, S3_KEYS, optional=True)
    kubernetes.use_secret_as_env(task, settings.mlflow_secret, MLFLOW_KEYS, optional=True)
    return task


def _place(task: dsl.PipelineTask, res: StepResources, image: str) -> dsl.PipelineTask:
    """The CUDA image, accelerator type/limit, CPU/memory limits, node selector and tolerations of one kind of
    step."""
    task.set_container_image(image)
    if res.accelerator_type:
        task.set_accelerator_type(res.accelerator_type).set_accelerator_limit(res.accelerator_limit)
    if res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    if res.memory_limit:
        task.set_memory_limit(res.memory_limit)
    for key, value in sorted(res.node_selector.items()):
        kubernetes.add_node_selector(task, key, value)
    for tol in res.tolerations:
        kubernetes.add_toleration(
            task,
            key=tol.get("key"),
            operator=tol.get("operator", "Equal"),
            value=tol.get("value"),
            effect=tol.get("effect"),
        )
    return task


def build(rounds: int = DEFAULT_ROUNDS, settings: PipelineConfig | None = None):
    """The pipeline function with ``rounds`` rounds and the node pools and secrets of ``settings``."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (got {rounds})")
    s = settings or PipelineConfig()

    @dsl.pipeline(
        name="htgrpo",
        description=f"HT-GRPO fine-tuning: {rounds} round(s) of sharded rollout, reward scoring and the global, "
        "structure and refinement stages; shapes evaluation of base and trained models; MLflow registry.",
    )
    def htgrpo_pipeline(
        config: str = "configs/tiny.yaml",
        overrides: list = [],  # noqa: B006 - KFP reads the default from the signature
        init_checkpoint: str = "checkpoints/base",
        run_name: str = "",
        shards: int = s.shards,
        storage_uri: str = "",
        tracking_uri: str = "",
    ):
        prep = prepare_data(
            config=config,
            overrides=overrides,
            init_checkpoint=init_checkpoint,
            run_name=run_name,
            rounds=rounds,
            shards=shards,
            storage_uri=storage_uri,
            tracking_uri=tracking_uri,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
        _common(prep, s, "prepare-data")
        cfg, root, parent = (
            prep.outputs["config_json"],
            prep.outputs["run_root"],
            prep.outputs["parent_run_id"],
        )
        base_eval = evaluate(
            config_json=cfg, run_root=root, checkpoint_uri=prep.outputs["init_checkpoint"], name="base",
            parent_run_id=parent,
        )  # fmt: skip
        _place(_common(base_eval, s, "evaluate-base"), s.eval, s.gpu_image)

        checkpoint = prep.outputs["init_checkpoint"]
        for r in range(1, rounds + 1):
            plan = plan_shards(
                config_json=cfg, run_root=root, checkpoint_uri=checkpoint, round_index=r, shards=shards
            )
            _common(plan, s, f"round-{r}-plan-shards")
            with dsl.ParallelFor(plan.output, name=f"round-{r}-shards") as shard_task:
                ro = rollout(shard_task=shard_task)
                _place(_common(ro, s, f"round-{r}-rollout"), s.rollout, s.gpu_image)
            sc = score_rewards(
                config_json=cfg, run_root=root, checkpoint_uri=checkpoint, round_index=r,
                shard_uris=dsl.Collected(ro.output), parent_run_id=parent,
            )  # fmt: skip
            _place(_common(sc, s, f"round-{r}-score"), s.reward, s.gpu_image)
            for stage, component in (
                ("global", train_global),
                ("structure", train_structure),
                ("refinement", train_refinement),
            ):
                t = component(
                    config_json=cfg, run_root=root, checkpoint_uri=checkpoint, scored_uri=sc.output,
                    round_index=r, parent_run_id=parent,
                )  # fmt: skip
                _place(_common(t, s, f"round-{r}-{stage}"), s.train, s.gpu_image)
                checkpoint = t.output

        trained_eval = evaluate(
            config_json=cfg, run_root=root, checkpoint_uri=checkpoint, name="trained", parent_run_id=parent
        )
        _place(_common(trained_eval, s, "evaluate-trained"), s.eval, s.gpu_image)
        reg = register(
            config_json=cfg, run_root=root, checkpoint_uri=checkpoint,
            base_metrics=base_eval.outputs["Output"], trained_metrics=trained_eval.outputs["Output"],
            parent_run_id=parent,
        )  # fmt: skip
        _common(reg, s, "register")

    return htgrpo_pipeline


htgrpo_pipeline = build()


def compile_pipeline(
    out: str | Path, rounds: int = DEFAULT_ROUNDS, settings: PipelineConfig | None = None
) -> Path:
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(rounds, settings), str(out))
    return out
