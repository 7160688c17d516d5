"""Image transforms: SimCLR's two views (lightly's SimCLRTransform with presets) and evaluation."""

from __future__ import annotations

import torchvision.transforms as T
from lightly.transforms import SimCLRTransform

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


# The knobs a user may override with `--aug KEY=VALUE` (lightly's names).
AUGMENT_KNOBS = tuple(AUGMENT_PRESETS["study"]) + ("sigmas", "rr_degrees")


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
    return key, numbers if len(numbers) == 2 else numbers[0]


def simclr_transform(image_size: int, mean, std, preset: str = "study", **overrides) -> SimCLRTransform:
    """Two augmented views per image; any lightly SimCLRTransform argument can be overridden."""
    # lightly's blur sigmas are in pixels and tuned for 224 px (SimCLR's kernel is 10% of the
    # image); scaled with the image size, a 64-px view is blurred as much as a 224-px one.
    scale = image_size / 224
    kwargs = {**AUGMENT_PRESETS[preset], "sigmas": (0.1 * scale, 2.0 * scale), **overrides}
    return SimCLRTransform(input_size=image_size, normalize={"mean": list(mean), "std": list(std)},
                           **kwargs)


def eval_transform(image_size: int, mean, std) -> T.Compose:
    """Resize the short side to 8/7 of the size and centre-crop, as ImageNet evaluation does."""
    return T.Compose([T.Resize(int(round(image_size * 8 / 7))), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(mean, std)])


def finetune_transform(image_size: int, mean, std, flips: str = "") -> T.Compose:
    """Train-time augmentation for finetuning: a mild random resized crop, and flips only where
    the anatomy allows them (`flips`: "h", "v", "hv" or "")."""
    steps = [T.RandomResizedCrop(image_size, scale=(0.6, 1.0))]
    if "h" in flips:
        steps.append(T.RandomHorizontalFlip())
    if "v" in flips:
        steps.append(T.RandomVerticalFlip())
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])
