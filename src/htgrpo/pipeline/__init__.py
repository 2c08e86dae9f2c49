"""The Kubeflow pipeline's steps as library functions (``steps``) and its local runner (``local``).

The components in ``components/<name>/component.py`` are thin KFP shells over ``htgrpo.pipeline.steps``; the
pipeline graph is ``pipelines/htgrpo.py``, compiled to the committed ``pipelines/htgrpo.yaml``.
"""
