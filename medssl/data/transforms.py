"""Image transforms, split where the work is cheapest.

In the loader workers, on uint8 images from the cache (short side 8/7 of the training size,
aspect ratio kept): crops and flips
(`simclr_crops`, `finetune_crops`, `eval_crop`). Per batch on the accelerator: uint8 to normalised
floats (`Normalize`) and, for SimCLR, colour jitter, grayscale and blur (`simclr_colour_blur`).
Presets and knobs use lightly's SimCLRTransform names; `lightly_transform` builds lightly's own
PIL pipeline from the same settings, the reference the fast path is tested and benchmarked against.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from medssl.data.batch_augment import BatchColourBlur, MultiCrops, ViewColour, ViewCrops
from medssl.errors import MedsslError

# The study: random resized crop, colour jitter 0.8 with p 0.8, grayscale p 0.2, blur p 0.5, no flips.
# X-rays: the same without hue or saturation jitter (they are grey), still no flips (anatomy).
AUGMENT_PRESETS = {
    "study": dict(cj_prob=0.8, cj_strength=1.0, cj_bright=0.8, cj_contrast=0.8, cj_sat=0.8,
                  cj_hue=0.2, min_scale=0.08, random_gray_scale=0.2, gaussian_blur=0.5,
                  hf_prob=0.0, vf_prob=0.0, rr_prob=0.0),
    "xray": dict(cj_prob=0.8, cj_strength=1.0, cj_bright=0.8, cj_contrast=0.8, cj_sat=0.0,
                 cj_hue=0.0, min_scale=0.08, random_gray_scale=0.0, gaussian_blur=0.5,
                 hf_prob=0.0, vf_prob=0.0, rr_prob=0.0),
}


# The knobs a user may override with `--aug KEY=VALUE` (lightly's names), each with the range it
# must lie in: (low, high, what it is). One table, read by the CLI (`parse_augment_override`) and
# by every configuration (`simclr_settings`), so a value out of range stops a run before it starts
# instead of failing inside a loader worker.
AUGMENT_RANGES = {
    "cj_prob": (0.0, 1.0, "a probability"),
    "cj_strength": (0.0, 10.0, "a jitter strength"),
    "cj_bright": (0.0, 10.0, "a brightness jitter"),
    "cj_contrast": (0.0, 10.0, "a contrast jitter"),
    "cj_sat": (0.0, 10.0, "a saturation jitter"),
    "cj_hue": (0.0, 0.5, "a hue jitter (torchvision allows at most 0.5)"),
    "min_scale": (0.0, 1.0, "the smallest crop's share of the image"),
    "random_gray_scale": (0.0, 1.0, "a probability"),
    "gaussian_blur": (0.0, 1.0, "a probability"),
    "hf_prob": (0.0, 1.0, "a probability"),
    "vf_prob": (0.0, 1.0, "a probability"),
    "rr_prob": (0.0, 1.0, "a probability"),
    "sigmas": (0.0, 1000.0, "blur sigmas in pixels"),
    "rr_degrees": (-360.0, 360.0, "rotation degrees"),
}
AUGMENT_KNOBS = tuple(AUGMENT_RANGES)


def augment_problem(key: str, value) -> str | None:
    """Why `key=value` is not a usable augmentation setting (None when it is)."""
    if key not in AUGMENT_RANGES:
        return f"{key} is not one of: {', '.join(AUGMENT_KNOBS)}"
    low, high, what = AUGMENT_RANGES[key]
    numbers = value if isinstance(value, (tuple, list)) else (value,)
    for v in numbers:
        if not isinstance(v, (int, float)) or not low <= v <= high:
            return f"{key}={v} is out of range: {what}, from {low:g} to {high:g}"
    if key == "min_scale" and numbers[0] <= 0:
        return f"min_scale={numbers[0]} must be above 0 (a crop of nothing)"
    if key == "sigmas" and (numbers[0] <= 0 or numbers[0] > numbers[-1]):
        return f"sigmas={','.join(map(str, numbers))} must be two numbers 0 < low <= high"
    return None


def parse_augment_override(text: str) -> tuple[str, float | tuple[float, ...]]:
    """`min_scale=0.3` -> ("min_scale", 0.3); `sigmas=0.1,2` -> ("sigmas", (0.1, 2.0))."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in AUGMENT_KNOBS:
        raise ValueError(f"'{text}' is not KEY=VALUE with KEY one of: {', '.join(AUGMENT_KNOBS)}")
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"'{text}': the value must be a number (or two, comma-separated)") from None
    allowed = {"sigmas": (2,), "rr_degrees": (1, 2)}.get(key, (1,))
    if len(numbers) not in allowed:
        raise ValueError(f"'{text}': {key} takes " + " or ".join(map(str, allowed)) + " number(s)")
    parsed = numbers if len(numbers) == 2 else numbers[0]
    why = augment_problem(key, parsed)
    if why:
        raise ValueError(why)
    return key, parsed


# A crop must keep this many pixels of the network's input per side. The preset's 8% of a 224-px
# picture keeps 63; of a 32-px one 9, a blob: on the digits set (32 px) crops of at least half
# the picture (23 px) took every method but SimSiam above its random init, where 8% left most
# below it (docs/methods.md).
SMALLEST_CROP_SIDE = 24


def smallest_crop(image_size: int) -> float:
    """The smallest crop's share of the picture that keeps SMALLEST_CROP_SIDE pixels per side at
    `image_size` px, at most half the picture (a crop must still differ from its twin): 0.5 at
    32 px, 0.14 at 64, below the presets' 0.08 from 85 px up."""
    return min(0.5, (SMALLEST_CROP_SIDE / image_size) ** 2)


def simclr_settings(image_size: int, preset: str = "study", **overrides) -> dict:
    """The preset's knobs with overrides. lightly's blur sigmas are in pixels and tuned for 224
    px (SimCLR's kernel is 10% of the image); scaled with the size, a 64-px view is blurred as
    much as a 224-px one."""
    if preset not in AUGMENT_PRESETS:
        raise MedsslError(f"Unknown augmentation preset '{preset}'. Choose one of: "
                          f"{', '.join(AUGMENT_PRESETS)}.")
    for key, value in overrides.items():
        why = augment_problem(key, value)
        if why:
            raise MedsslError(f"--aug {why}. Fix: give a value in range, or leave the preset's.")
    if overrides.get("rr_prob", 0) > 0:
        raise MedsslError("--aug rr_prob: rotation is not supported by the fast SimCLR views. "
                          "Fix: use flips (hf_prob, vf_prob) instead.")
    scale = image_size / 224
    return {**AUGMENT_PRESETS[preset], "sigmas": (0.1 * scale, 2.0 * scale), **overrides}


def simclr_crops(image_size: int, settings: dict) -> ViewCrops:
    """Per image, in the workers: two random resized crops with the preset's flips/rotation."""
    if settings.get("rr_prob", 0) > 0:
        raise ValueError("rotation (rr_prob > 0) is not supported by the fast SimCLR views; "
                         "use flips (hf_prob, vf_prob) instead")
    return ViewCrops(image_size, settings["min_scale"], settings["hf_prob"], settings["vf_prob"])


def simclr_colour_blur(settings: dict, mean, std) -> BatchColourBlur:
    """Per batch, on the accelerator: colour jitter, grayscale, blur and normalisation."""
    keys = ("cj_prob", "cj_strength", "cj_bright", "cj_contrast", "cj_sat", "cj_hue",
            "random_gray_scale", "gaussian_blur", "sigmas")
    return BatchColourBlur(mean, std, **{k: settings[k] for k in keys})


COLOUR_KEYS = ("cj_prob", "cj_strength", "cj_bright", "cj_contrast", "cj_sat", "cj_hue",
               "random_gray_scale", "gaussian_blur", "sigmas", "solarize")


def method_views(views, image_size: int, settings: dict, mean, std) -> tuple[MultiCrops, ViewColour]:
    """A method's views (`training.methods.base.View`: size, scale, colour changes) as the two
    halves of the fast path: the crops in the loader workers and the colour per batch. Each view
    keeps the preset's rules (an X-ray preset has no hue or saturation jitter and no flips
    whatever the method); blur sigmas follow each view's size; views with the same settings
    share one transform, so they are augmented in one call."""
    crops = MultiCrops([(v.size, v.scale) for v in views], settings["hf_prob"], settings["vf_prob"])
    shared: dict[tuple, BatchColourBlur] = {}
    per_view = []
    for v in views:
        knobs = {"solarize": 0.0, **{k: settings[k] for k in COLOUR_KEYS if k in settings},
                 **v.colour}
        ratio = v.size / image_size
        knobs["sigmas"] = tuple(s * ratio for s in knobs["sigmas"])
        key = tuple(sorted((k, tuple(x) if isinstance(x, (tuple, list)) else x)
                           for k, x in knobs.items()))
        if key not in shared:
            shared[key] = BatchColourBlur(mean, std, **knobs)
        per_view.append(shared[key])
    return crops, ViewColour(per_view)


def lightly_transform(image_size: int, settings: dict, mean, std):
    """lightly's own SimCLRTransform (PIL, per image) with the same settings: the reference."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=image_size, normalize={"mean": list(mean), "std": list(std)},
                           **settings)


def finetune_crops(image_size: int, flips: str = "") -> v2.Compose:
    """Finetuning's train-time augmentation on uint8: a mild random resized crop, and flips only
    where the anatomy allows them (`flips`: "h", "v", "hv" or "")."""
    steps = [v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True)]
    if "h" in flips:
        steps.append(v2.RandomHorizontalFlip())
    if "v" in flips:
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose(steps)


def eval_crop(image_size: int) -> v2.CenterCrop:
    """The cached image is the picture with its short side resized to 8/7 of the size: its centre
    crop is the usual resize-and-centre-crop evaluation."""
    return v2.CenterCrop(image_size)


def channel_stats(mean, std, channels: int = 3) -> tuple[tuple, tuple]:
    """A preset's RGB mean and std for `channels` input channels: as they are for 3; for a grey
    stem (1), their luminance (the weights the grey picture is made with), one value each."""
    if channels == 3:
        return tuple(mean), tuple(std)
    luma = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")
    return ((sum(w * m for w, m in zip(luma, mean)),),
            (sum(w * s for w, s in zip(luma, std)),))


class Normalize(nn.Module):
    """uint8 batch -> normalised float batch in channels-last layout, on whatever device it is.
    `mean` and `std` have one value per channel (channel_stats)."""

    def __init__(self, mean, std):
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1 / (255 * std_t), persistent=False)
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        x = x.float().mul_(self.scale).add_(self.shift)
        return x.contiguous(memory_format=torch.channels_last)
