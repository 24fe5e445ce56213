"""negschedule: control when and how negative prompts act during Stable Diffusion sampling.

``generate(pipe, ..., negative_start=k)`` runs a stock diffusers pipeline with the negative prompt
acting only from step k (or in any window, or by AUTOMATIC1111 prompt-editing syntax);
``load_pipeline()`` loads the embedded default model or any local / single-file / hub model.
"""

__version__ = "0.1.0"

from .callbacks import NegativeScheduleCallback
from .errors import InputError
from .generate import generate
from .schedule import NegativeSchedule, NegativeWindow, Sigma, TimestepPercent


def load_pipeline(*args, **kwargs):
    """Load a pipeline: the embedded default, a local folder, a single file or a hub id (see models.py)."""
    from .models import load_pipeline as _load

    return _load(*args, **kwargs)


__all__ = [
    "InputError",
    "NegativeSchedule",
    "NegativeScheduleCallback",
    "NegativeWindow",
    "Sigma",
    "TimestepPercent",
    "generate",
    "load_pipeline",
    "__version__",
]
