"""plan_shards: the ParallelFor items of one round, one self-contained dict per rollout shard (a CPU step)."""

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_shards(config_json: str, run_root: str, checkpoint_uri: str, round_index: int, shards: int) -> list:
    from htgrpo.pipeline import steps

    return steps.plan_shards(config_json, run_root, checkpoint_uri, int(round_index), int(shards))
