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


def simclr_transform(image_size: int, mean, std, preset: str = "study", **overrides) -> SimCLRTransform:
    """Two augmented views per image; any lightly SimCLRTransform argument can be overridden."""
    kwargs = {**AUGMENT_PRESETS[preset], **overrides}
    return SimCLRTransform(input_size=image_size, normalize={"mean": list(mean), "std": list(std)},
                           **kwargs)


def eval_transform(image_size: int, mean, std) -> T.Compose:
    """Resize the short side to 8/7 of the size and centre-crop, as ImageNet evaluation does."""
    return T.Compose([T.Resize(int(round(image_size * 8 / 7))), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(mean, std)])
