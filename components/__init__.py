"""KFP components of the HT-GRPO pipeline: one folder per step, each a thin shell over htgrpo.pipeline.steps.

Every component is a lightweight Python component. ``BASE_IMAGE`` is only the decorator's placeholder: the
pipeline sets each task's image at compile time, ``pipeline.image`` (images/cpu.Dockerfile) for the light steps and
``pipeline.gpu_image`` (images/cuda.Dockerfile) for the GPU steps; both images already hold kfp and this project,
so nothing is pip-installed when a pod starts.
"""

BASE_IMAGE = "python:3.11"
