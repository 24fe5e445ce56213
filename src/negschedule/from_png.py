"""Remaking an image from its PNG: the ``parameters`` text turned back into command-line flags.

``generate --from-png PATH`` (and ``compare``) read the settings text that negschedule and A1111
write into a PNG (``images.read_a1111_parameters`` reads it as A1111's PNG Info does) and put the
matching flags before the ones typed, so that typed flags win, as they would over any default.
A1111's own names (its samplers, "Schedule type: Karras", "Clip skip" counted from 1) are mapped
to ours; a setting that cannot be remade here (a sampler or schedule type we lack, LoRA files by
name only, A1111's hires fix) is one clear error.
"""

from __future__ import annotations

import re

from .errors import InputError


# A1111's sampler names (with its "Schedule type" where it writes one) -> ours.
A1111_SAMPLERS = {
    "Euler a": "euler_a", "Euler": "euler", "DDIM": "ddim", "DDPM": "ddpm", "PLMS": "pndm", "PNDM": "pndm",
    "LMS": "lms", "LMS Karras": "lms_karras", "Heun": "heun", "UniPC": "unipc",
    "DPM++ 2M": "dpmpp_2m", "DPM++ 2M Karras": "dpmpp_2m_karras",
}


# A1111's extra-network tags (<lora:name:weight>, <lyco:...>, <hypernet:...>): files named in the prompt.
LORA_TAG = re.compile(r"<(?:lora|lyco|hypernet):[^>]*>")


def png_arguments(path: str, given: set[str]) -> list[str]:
    """The flags that remake the image at ``path`` from its ``parameters`` text; flags in ``given``
    (those typed on the command line) are left out, so the typed ones win."""
    from .images import open_image, read_a1111_parameters
    from .models import default_model_name
    from .schedulers import SCHEDULERS

    text = open_image(path, "from_png").info.get("parameters")
    if not isinstance(text, str) or not text.strip():
        raise InputError("from_png", path, "has no 'parameters' text (the settings A1111 and negschedule write)")
    prompt, negative, fields = read_a1111_parameters(text)
    out: list[str] = []
    hires = sorted(key for key in fields if key.startswith("Hires "))
    if hires:
        # A1111 writes "Denoising strength" for the hires pass too: this is not an img2img picture.
        raise InputError("from_png", path, f"was made with A1111's hires fix ({hires[0]}: {fields[hires[0]]}), "
                                           "a second, upscaled pass that is not remade here")
    tags = [tag for text in (prompt, negative or "") for tag in LORA_TAG.findall(text)]
    if tags and "--lora" not in given:
        raise InputError("from_png", path, f"names LoRA files in its prompt ({tags[0]}); give each with --lora PATH:WEIGHT")
    # A1111 takes the tags out of the prompt before encoding it; the files come from --lora.
    prompt = LORA_TAG.sub("", prompt)
    negative = LORA_TAG.sub("", negative) if negative else negative

    def flag(name: str, *values: str) -> None:
        if name not in given:
            out.extend([name, *values])

    flag("--prompt", prompt)
    if negative:
        flag("--negative-prompt", negative)
    simple = {"Steps": "--steps", "CFG scale": "--guidance-scale", "CFG scale with negative": "--guidance-scale-with-negative", "Seed": "--seed", "Negative start": "--negative-start",
              "Negative end": "--negative-end", "Negative prompt 2": "--negative-prompt-2", "Guidance": "--guidance",
              "Negative scale": "--negative-scale", "Auto signal": "--auto-signal", "Auto max start": "--auto-max-start",
              "Auto choice": "--auto-choice", "Denoising strength": "--strength"}
    for key, name in simple.items():
        if key in fields:
            flag(name, fields[key])
    if "Sampler" in fields and "--scheduler" not in given:
        sampler = fields["Sampler"]
        schedule = fields.get("Schedule type", "Automatic")
        if schedule == "Karras" and not sampler.endswith("Karras"):
            sampler += " Karras"
        elif schedule not in ("Automatic", "Uniform", "Karras"):  # Exponential, SGM Uniform, Align Your Steps, ...
            raise InputError("from_png", path, f"its schedule type {schedule!r} has no counterpart here; give --scheduler")
        name = sampler if sampler in SCHEDULERS else A1111_SAMPLERS.get(sampler)
        if name is None:
            raise InputError("from_png", path, f"its sampler {sampler!r} has no counterpart here; give --scheduler")
        flag("--scheduler", name)
    if re.fullmatch(r"\d+x\d+", fields.get("Size", "")):
        width, height = fields["Size"].split("x")
        flag("--width", width)
        flag("--height", height)
    if fields.get("Model") and fields["Model"] != default_model_name():
        flag("--model", fields["Model"])
    clip_skip = fields.get("Clip skip", "")
    if clip_skip.isdigit() and int(clip_skip) >= 2:
        flag("--clip-skip", str(int(clip_skip) - 1))  # A1111 counts the last layer as 1
    for key, name in (("CFG off while negative off", "--cfg-off"), ("Sigma min every other step", "--sigma-min-every-other")):
        if fields.get(key) == "True":
            flag(name)
    window = re.fullmatch(r"\[(.*), (.*)\]", fields.get("Sigma window", ""))
    if window:
        for bound, name in zip(window.groups(), ("--sigma-min", "--sigma-max")):
            if bound != "None":
                flag(name, bound)
    if "Negative windows" in fields and "--negative-window" not in given:
        for part in fields["Negative windows"].split("; "):
            parsed = re.fullmatch(r"(.*) \[(.*), (.*)\)", part)
            if parsed is None:
                raise InputError("from_png", path, f"cannot read its negative window {part!r}")
            out.extend(["--negative-window", parsed[1], parsed[2], "none" if parsed[3] == "None" else parsed[3]])
    if "Textual inversion" in fields and "--textual-inversion" not in given:
        for part in fields["Textual inversion"].split("; "):
            token, _, file = part.partition("=")
            out.extend(["--textual-inversion", f"{file}:{token}"])
    if "Lora" in fields and "--lora" not in given:
        raise InputError("from_png", path, f"was made with LoRA files ({fields['Lora']}); give each with --lora PATH:WEIGHT")
    return out


def with_png_arguments(argv: list[str]) -> list[str]:
    """``argv`` of a generate/compare call with ``--from-png PATH``: the PNG's flags first, the typed ones after."""
    path, given = None, set()
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            given.add(name)
            if name == "--from-png":
                path = value or (argv[i + 1] if i + 1 < len(argv) else None)
    if path is None:
        return argv
    return [argv[0], *png_arguments(path, given), *argv[1:]]
