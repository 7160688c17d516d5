"""medssl: which starting weights should a medical-image classifier use? SSL vs ImageNet vs random."""

__version__ = "0.1.0"


def load_image(path, window: str = "auto"):
    """One picture exactly as medssl's training sees it before resizing (decoded, DICOM or 16-bit
    windowed with `window`, RGB), as an `H x W x 3` uint8 NumPy array."""
    from medssl.data.images import load_image as load  # lazy: `import medssl` stays light

    return load(path, window)
