"""htgrpo: HT-GRPO ("Sketch Then Paint") for discrete-diffusion multimodal LLMs."""

__version__ = "0.1.0"
