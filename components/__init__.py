"""KFP components of the HT-GRPO pipeline: one folder per step, each a thin shell over htgrpo.pipeline.steps.

Every component is a lightweight Python component. ``BASE_IMAGE`` is only the decorator's placeholder: the
pipeline sets each task's image from ``pipeline.image`` (a build of this project) at compile time, and the image
already holds kfp, so nothing is pip-installed when a pod starts.
"""

BASE_IMAGE = "python:3.11"
