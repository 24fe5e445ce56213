"""negschedule: control when and how negative prompts act during Stable Diffusion sampling."""

__version__ = "0.1.0"
