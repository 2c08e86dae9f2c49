"""rollout: one shard of a round's prompts x G images with the current policy; tokens, trajectories and images
are written to the run's store as one safetensors object, whose URI is the output."""

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def rollout(shard_task: dict) -> str:
    """``shard_task``: one item of plan_shards (config_json, run_root, checkpoint_uri, round, shard, shards)."""
    from htgrpo.pipeline import steps

    t = shard_task
    return steps.rollout(
        t["config_json"],
        t["run_root"],
        t["checkpoint_uri"],
        int(t["round"]),
        int(t["shard"]),
        int(t["shards"]),
    )
