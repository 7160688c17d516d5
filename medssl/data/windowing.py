"""From the values a medical image stores (12- to 16-bit DICOM, 16-bit PNG and TIFF) to the 8-bit
grey picture the model sees: `--window auto|minmax|C,W`.

- `auto` (the default): a DICOM file's own VOI LUT or its first window centre/width, where it
  has one (what its modality chose for reading it); otherwise the values between the 0.5th and
  99.5th percentiles of the picture, so a few extreme pixels (a marker, a collimator edge) do not
  squeeze the anatomy into a few grey levels;
- `minmax`: the picture's lowest value to black and its highest to white;
- `C,W`: one window for every picture, centre C and width W in the stored values after the
  modality LUT (Hounsfield units for CT; `40,400` is a soft-tissue window).

8-bit pictures (JPEG, 8-bit PNG) are display-ready and are never windowed. Pure numpy, so the
image reader and the decode pass of every worker apply it alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_CHOICES = "auto, minmax, or C,W (a centre and width such as 40,400)"
PERCENTILES = (0.5, 99.5)  # auto's window where a file has none


@dataclass(frozen=True)
class Window:
    mode: str = "auto"  # auto, minmax or fixed
    centre: float | None = None
    width: float | None = None

    def __str__(self) -> str:
        return f"{self.centre:g},{self.width:g}" if self.mode == "fixed" else self.mode


def parse_window(text: str | Window | None) -> Window:
    """`--window`'s value as a Window; ValueError naming the choices when it is none of them."""
    if isinstance(text, Window):
        return text
    text = (text or "auto").strip().lower()
    if text in ("auto", "minmax"):
        return Window(text)
    parts = text.split(",")
    try:
        centre, width = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--window {text!r}: expected {WINDOW_CHOICES}") from None
    if not (np.isfinite(centre) and np.isfinite(width) and width >= 1):
        raise ValueError(f"--window {text!r}: the centre must be a number and the width at "
                         "least 1 (DICOM's smallest window)")
    return Window("fixed", centre, width)


def linear(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2.1), to [0, 1]: written out rather than
    pydicom's `apply_windowing`, which maps to the stored bit range instead of a unit range."""
    if width <= 1:
        return (values > centre - 0.5).astype(np.float64)
    return np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`low` to 0 and `high` to 1, clipped; a flat picture is all 0."""
    if not high > low:
        return np.zeros(values.shape, np.float64)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def to_unit(values: np.ndarray, window: Window, own: tuple[float, float] | None = None) -> np.ndarray:
    """Stored values as [0, 1] under `window`; `own` is the file's own (centre, width), which
    `auto` prefers."""
    values = np.asarray(values, dtype=np.float64)
    if window.mode == "fixed":
        return linear(values, window.centre, window.width)
    if window.mode == "auto" and own is not None:
        return linear(values, *own)
    if window.mode == "minmax":
        return stretch(values, float(values.min()), float(values.max()))
    low, high = np.percentile(values, PERCENTILES)
    return stretch(values, float(low), float(high))


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] as 0-255."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
