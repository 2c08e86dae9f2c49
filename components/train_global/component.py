"""train_global: the HT-GRPO global stage's inner iterations on a round's scored batch; reads the current
checkpoint, writes the next one (manifest last) and outputs its URI. A re-run after a killed pod returns the
checkpoint it already wrote whole."""

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_global(
    config_json: str,
    run_root: str,
    checkpoint_uri: str,
    scored_uri: str,
    round_index: int,
    parent_run_id: str,
) -> str:
    from htgrpo.pipeline import steps

    return steps.train_stage(
        config_json, run_root, "global", checkpoint_uri, scored_uri, int(round_index), parent_run_id
    )
