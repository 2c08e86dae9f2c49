"""evaluate: the shapes benchmark (the run's eval section) of a checkpoint -> metrics (also in MLflow)."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    config_json: str,
    run_root: str,
    checkpoint_uri: str,
    name: str,
    parent_run_id: str,
    metrics: Output[Metrics],
) -> dict:
    from htgrpo.pipeline import steps

    result = steps.evaluate(config_json, run_root, checkpoint_uri, name, parent_run_id)
    for key, value in result.items():
        metrics.log_metric(key, float(value))
    return result
