"""Concept detectors: does an image show the thing a negative prompt names?

This module owns the yes/no answer the removal metrics and the removal curve are built on. Two
kinds, one call signature ``detector(image) -> bool``:

* :class:`ToyDetector` - the toy world's exact detector, ``negschedule.toyworld.present(image,
  concept)`` (and ``detect(image)`` for object-level preservation).
* :class:`ClipDetector` - for real models: zero-shot CLIP through transformers' ``CLIPModel``.
  The concept counts as present when CLIP prefers "a photo of {concept}" over the neutral
  "a photo" by more than ``margin`` in its softmax, a test that needs no threshold tuned per
  concept. Any ``CLIPModel`` and its processor (or tokenizer and image size) work; the tests use a
  tiny random one built offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError

DETECTORS = ("toy", "clip")


class ToyDetector:
    """The toy world's ground truth for ``concept`` (e.g. ``"red circle"``)."""

    def __init__(self, concept: str):
        from ..toyworld import present

        self.concept = concept
        self._present = present
        # A concept the toy world has no word for must fail now, not after the sampling.
        from PIL import Image

        try:
            present(Image.new("RGB", (32, 32)), concept)
        except InputError as err:
            raise InputError("concept", concept, err.reason) from None

    def __call__(self, image) -> bool:
        return bool(self._present(image, self.concept))

    def objects(self, image) -> list[Any] | None:
        """The objects in ``image`` (for object-level preservation), or None where the toy world cannot say."""
        try:
            from ..toyworld import detect

            return list(detect(image))
        except (ImportError, NotImplementedError):
            return None


@dataclass(frozen=True)
class ClipSettings:
    """How a CLIP-based detector decides."""

    template: str = "a photo of {}"  # the concept's text
    neutral: str = "a photo"  # the alternative it must beat
    margin: float = 0.0  # present when p(concept) - p(neutral) > margin


class ClipDetector:
    """Zero-shot CLIP presence test: ``model`` is a transformers ``CLIPModel``."""

    def __init__(self, concept: str, model, tokenizer, image_size: int | None = None,
                 mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
                 settings: ClipSettings | None = None):
        self.concept = concept
        self.model = model.eval()
        self.settings = settings or ClipSettings()
        self.image_size = image_size or model.config.vision_config.image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        texts = [self.settings.template.format(concept), self.settings.neutral]
        tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                           max_length=model.config.text_config.max_position_embeddings)
        with torch.no_grad():
            text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))
            text = text if isinstance(text, torch.Tensor) else text.pooler_output
        self._text = text / text.norm(dim=-1, keepdim=True)

    def _pixels(self, image) -> torch.Tensor:
        # Resize with PIL (bicubic), as CLIP's own processor does, without its torchvision backend.
        from PIL import Image

        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        return (x - self.mean) / self.std

    def probability(self, image) -> float:
        """CLIP's probability that ``image`` shows the concept rather than the neutral text."""
        with torch.no_grad():
            features = self.model.get_image_features(pixel_values=self._pixels(image))
            features = features if isinstance(features, torch.Tensor) else features.pooler_output
            features = features / features.norm(dim=-1, keepdim=True)
            logits = self.model.logit_scale.exp() * features @ self._text.T
            return float(logits.softmax(dim=-1)[0, 0])

    def __call__(self, image) -> bool:
        p = self.probability(image)
        return p - (1 - p) > self.settings.margin

    def objects(self, image):
        return None


def make_detector(concept: str | None, kind: str = "toy", **clip: Any) -> Callable | None:
    """The detector for ``concept`` of ``kind`` (``toy`` or ``clip``); None when there is no concept."""
    if concept is None:
        return None
    if not isinstance(concept, str) or not concept.strip():
        raise InputError("concept", concept, "must be a non-empty text, e.g. 'red circle'")
    if kind == "toy":
        return ToyDetector(concept)
    if kind == "clip":
        if "model" not in clip or "tokenizer" not in clip:
            raise InputError("detector", kind, "a CLIP detector needs a CLIPModel and its tokenizer (model=, tokenizer=)")
        return ClipDetector(concept, **clip)
    raise InputError("detector", kind, f"unknown detector; choose one of {', '.join(DETECTORS)}")
