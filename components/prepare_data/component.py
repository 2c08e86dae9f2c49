"""prepare_data: validate the whole run configuration, check the initial checkpoint, write the prompt set, and
open the MLflow parent run whose id every later step receives."""

from typing import NamedTuple

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare_data(
    config: str,
    overrides: list,
    init_checkpoint: str,
    run_name: str,
    rounds: int,
    shards: int,
    storage_uri: str,
    tracking_uri: str,
    kfp_run_id: str,
    kfp_run_name: str,
) -> NamedTuple(
    "Outputs",
    config_json=str,
    run_root=str,
    init_checkpoint=str,
    parent_run_id=str,
):
    """Fails here, before any GPU step, with a readable message when a parameter is bad."""
    import time
    from typing import NamedTuple

    from htgrpo.pipeline import steps

    name = (
        run_name
        or (kfp_run_name if "{{" not in kfp_run_name else "")
        or time.strftime("htgrpo-%Y%m%d-%H%M%S")
    )
    out = steps.prepare_data(
        config, list(overrides), init_checkpoint, name, rounds, shards, storage_uri, tracking_uri, kfp_run_id
    )
    outputs = NamedTuple(  # noqa: UP014 - KFP reads this form
        "Outputs", config_json=str, run_root=str, init_checkpoint=str, parent_run_id=str
    )
    return outputs(out["config_json"], out["run_root"], out["init_checkpoint"], out["parent_run_id"])
