"""SimCLR's colour and blur augmentations, batched as tensor ops with per-image random parameters.

lightly's SimCLRTransform does, per image with PIL: random resized crop, flips, colour jitter
(brightness, contrast, saturation, hue in a random order, with probability `cj_prob`), random
grayscale, Gaussian blur, then ToTensor and Normalize. The fast path splits that in two:

- per image, in the loader workers, on uint8 (`ViewCrops`): the crop and the flips, the cheap part;
- per batch, on the accelerator (or the CPU) after the transfer (`BatchColourBlur`): everything
  else, on float tensors, each image with its own random draw, in the same order and with the same
  ranges and probabilities as torchvision's ColorJitter, RandomGrayscale and lightly's GaussianBlur.

The arithmetic follows torchvision's tensor ops (`adjust_brightness`, `adjust_contrast`,
`adjust_saturation`, `adjust_hue`, ITU-R 601 grey): clamp to [0, 1] after each op.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.transforms import v2

GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _crop(size: int, scale: tuple[float, float], hf_prob: float, vf_prob: float) -> v2.Compose:
    steps = [v2.RandomResizedCrop(size, scale=scale, antialias=True)]
    if hf_prob > 0:
        steps.append(v2.RandomHorizontalFlip(hf_prob))
    if vf_prob > 0:
        steps.append(v2.RandomVerticalFlip(vf_prob))
    return v2.Compose(steps)


class ViewCrops:
    """The per-image part: `views` random resized crops (with flips) of one uint8 CHW image."""

    def __init__(self, input_size: int, min_scale: float = 0.08, hf_prob: float = 0.0,
                 vf_prob: float = 0.0, views: int = 2):
        self.crops = [_crop(input_size, (min_scale, 1.0), hf_prob, vf_prob)] * views

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [crop(image) for crop in self.crops]


class MultiCrops(ViewCrops):
    """Crops of several sizes and scales, in order: for multi-crop (SwAV, DINO), two large
    global crops and several small local ones. `crops`: (size, (min_scale, max_scale)) each."""

    def __init__(self, crops: list[tuple[int, tuple[float, float]]], hf_prob: float = 0.0,
                 vf_prob: float = 0.0):
        self.crops = [_crop(size, scale, hf_prob, vf_prob) for size, scale in crops]


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # a grey stem's one channel is its grey
        return x
    r, g, b = x.unbind(dim=1)
    return (GREY[0] * r + GREY[1] * g + GREY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend: factor * x + (1 - factor) * other, clamped; one fused lerp."""
    return torch.lerp(other.expand_as(x), x, factor).clamp_(0, 1)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue (RGB -> HSV, rotate H, -> RGB), without building S and V: a hue
    rotation keeps every pixel's max (V) and max - min (S * V), so RGB comes straight back from
    them with the closed form f(n) = V - S*V * clamp(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    chroma = maxc - minc
    divisor = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    # Hue in sixths of a turn, torchvision's case order: red is max first, then green.
    h6 = torch.where(maxc == r, (g - b) / divisor,
                     torch.where(maxc == g, (b - r) / divisor + 2, (r - g) / divisor + 4))
    h6 = torch.remainder(h6 + 6 * shift.view(-1, 1, 1), 6)
    out = torch.empty_like(x)
    for channel, n in enumerate((5, 3, 1)):
        k = torch.remainder(h6 + n, 6)
        out[:, channel] = maxc - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)
    return out


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image (grouped convolution), reflect padding."""
    n, c, h, w = x.shape
    # Three sigmas each side hold 99.7% of the weight; reflect padding needs less than the side.
    radius = max(1, min(math.ceil(3 * float(sigma.max())), h - 1, w - 1))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # n*c, k
    flat = x.reshape(1, n * c, h, w)
    flat = nn.functional.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = nn.functional.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = nn.functional.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = nn.functional.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


class BatchColourBlur(nn.Module):
    """The per-batch part: uint8 views in, normalised float views out, every image its own draw.

    Arguments are lightly SimCLRTransform's, so one preset configures both paths.
    """

    def __init__(self, mean, std, cj_prob: float = 0.8, cj_strength: float = 1.0,
                 cj_bright: float = 0.8, cj_contrast: float = 0.8, cj_sat: float = 0.8,
                 cj_hue: float = 0.2, random_gray_scale: float = 0.2, gaussian_blur: float = 0.5,
                 sigmas: tuple[float, float] = (0.1, 2.0), solarize: float = 0.0, chunk: int = 32):
        super().__init__()
        self.solarize_prob = solarize  # BYOL's and DINO's second view: invert pixels >= 0.5
        self.cj_prob, self.gray_prob, self.blur_prob = cj_prob, random_gray_scale, gaussian_blur
        self.bright = cj_strength * cj_bright
        self.contrast = cj_strength * cj_contrast
        self.sat = cj_strength * cj_sat
        self.hue = cj_strength * cj_hue
        self.sigmas = sigmas
        # Small chunks keep each op's working set in cache: the ops are memory-bound on a CPU.
        self.chunk = chunk
        # One value per channel: 3, or 1 for a grey stem (transforms.channel_stats).
        self.register_buffer("scale", 1 / (255 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)),
                             persistent=False)
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
                             / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def draw(self, n: int, generator: torch.Generator | None = None) -> dict:
        """Every random choice for `n` images, drawn on the CPU (the same on any device)."""
        def uniform(low, high):
            return low + (high - low) * torch.rand(n, generator=generator)

        return {
            "jitter": torch.rand(n, generator=generator) < self.cj_prob,
            # torchvision ColorJitter draws a random order of its four ops for every image.
            "order": torch.argsort(torch.rand(n, 4, generator=generator), dim=1),
            "bright": uniform(max(0, 1 - self.bright), 1 + self.bright),
            "contrast": uniform(max(0, 1 - self.contrast), 1 + self.contrast),
            "sat": uniform(max(0, 1 - self.sat), 1 + self.sat),
            "hue": uniform(-self.hue, self.hue),
            "grey": torch.rand(n, generator=generator) < self.gray_prob,
            "blur": torch.rand(n, generator=generator) < self.blur_prob,
            "sigma": uniform(*self.sigmas),
            # Drawn last and only when used, so settings without it draw exactly as before.
            **({"solarize": torch.rand(n, generator=generator) < self.solarize_prob}
               if self.solarize_prob > 0 else {}),
        }

    @torch.no_grad()
    def forward(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        params = self.draw(len(views), generator)
        out = torch.empty(views.shape, dtype=torch.float32, device=views.device)
        # Chunks help a CPU's caches; a GPU wants the whole batch in each kernel.
        chunk = self.chunk if views.device.type == "cpu" else len(views)
        for start in range(0, len(views), chunk):
            part = slice(start, start + chunk)
            p = {k: v[part].to(views.device) for k, v in params.items()}
            out[part] = self._augment(views[part].float().div_(255), p)
        return out.mul_(self.scale * 255).add_(self.shift)

    def _augment(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        ops = {
            0: lambda y, i: (y * p["bright"][i].view(-1, 1, 1, 1)).clamp_(0, 1),
            1: lambda y, i: _blend(y, _grey(y).mean(dim=(1, 2, 3), keepdim=True),
                                   p["contrast"][i].view(-1, 1, 1, 1)),
            2: lambda y, i: _blend(y, _grey(y), p["sat"][i].view(-1, 1, 1, 1)),
            3: lambda y, i: _adjust_hue(y, p["hue"][i]),
        }
        if self.hue == 0 or x.shape[1] == 1:
            ops.pop(3)  # the X-ray preset, or one grey channel: no hue jitter, no HSV round trip
        for slot in range(4):
            for op, fn in ops.items():
                idx = torch.nonzero(p["jitter"] & (p["order"][:, slot] == op)).flatten()
                if len(idx):
                    x[idx] = fn(x[idx], idx)
        idx = torch.nonzero(p["grey"]).flatten()
        if len(idx):
            x[idx] = _grey(x[idx]).expand(-1, x.shape[1], -1, -1)
        idx = torch.nonzero(p["blur"]).flatten()
        if len(idx):
            x[idx] = _gaussian_blur(x[idx], p["sigma"][idx])
        if "solarize" in p:  # lightly's RandomSolarization: threshold 0.5
            idx = torch.nonzero(p["solarize"]).flatten()
            if len(idx):
                x[idx] = torch.where(x[idx] >= 0.5, 1 - x[idx], x[idx])
        return x


class ViewColour(nn.Module):
    """Per-view colour and blur for a list of uint8 view batches: view k gets `transforms[k]`.
    Views of one size and one transform go through it in a single call (one set of kernels for
    the whole batch; for SimCLR's two identical views exactly what one call on both did)."""

    def __init__(self, transforms: list[BatchColourBlur]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    @torch.no_grad()
    def forward(self, views: list[torch.Tensor], generator: torch.Generator | None = None):
        out: list[torch.Tensor | None] = [None] * len(views)
        k = 0
        while k < len(views):  # runs of consecutive views sharing a transform and a size
            end = k + 1
            while end < len(views) and self.transforms[end] is self.transforms[k] \
                    and views[end].shape == views[k].shape:
                end += 1
            done = self.transforms[k](torch.cat(views[k:end]), generator=generator)
            for j, part in zip(range(k, end), done.chunk(end - k)):
                out[j] = part.contiguous(memory_format=torch.channels_last)
            k = end
        return out
