"""register: the trained checkpoint as a registered model version (alias candidate; champion when it beats the
champion on tracking.champion_metric), summary.json with base-vs-trained scores, and the parent run closed."""

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    config_json: str,
    run_root: str,
    checkpoint_uri: str,
    base_metrics: dict,
    trained_metrics: dict,
    parent_run_id: str,
) -> dict:
    from htgrpo.pipeline import steps

    return steps.register(config_json, run_root, checkpoint_uri, base_metrics, trained_metrics, parent_run_id)
