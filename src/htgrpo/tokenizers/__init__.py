"""Image tokenizers: images <-> grids of discrete codes."""

from htgrpo.tokenizers.base import ImageTokenizer
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer

__all__ = ["ImageTokenizer", "PatchKMeansTokenizer"]
