"""The shapes world: a synthetic text-to-image world whose truth is known, and the tiny model trained on it.

``world`` draws seeded scenes and captions, ``tokenizer`` writes the word-level CLIP BPE tokenizer,
``detector`` finds the objects in a picture exactly (``detect``, ``present``), ``train`` is the
training recipe, ``evaluate`` measures the shipped model and ``commands`` is the ``toy`` CLI command.
"""

from .detector import detect, present
from .world import COLOURS, SHAPES, VOCABULARY, WORLDS, Object, Scene, WorldConfig, caption, make_scene, render, sample

__all__ = ["COLOURS", "SHAPES", "VOCABULARY", "WORLDS", "Object", "Scene", "WorldConfig", "caption", "detect", "make_scene", "present", "render", "sample"]
