"""score_rewards: the weighted reward functions and group advantages over all shards of a round (a pod of its
own, so reward models get their own GPUs)."""

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def score_rewards(
    config_json: str,
    run_root: str,
    checkpoint_uri: str,
    round_index: int,
    shard_uris: list,
    parent_run_id: str,
) -> str:
    from htgrpo.pipeline import steps

    return steps.score_rewards(
        config_json, run_root, checkpoint_uri, int(round_index), [str(u) for u in shard_uris], parent_run_id
    )
