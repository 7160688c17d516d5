"""medssl: which starting weights should a medical-image classifier use? SSL vs ImageNet vs random."""

__version__ = "0.1.0"


def load_image(path, window: str = "auto"):
    """One picture exactly as medssl's training sees it before resizing (decoded, DICOM or 16-bit
    windowed with `window`, RGB), as an `H x W x 3` uint8 NumPy array."""
    from medssl.data.images import load_image as load  # lazy: `import medssl` stays light

    return load(path, window)


# The Python API (medssl/api.py, docs/api.md): the commands as functions, imported on first use
# so that `import medssl` stays light.
API = ("pretrain", "finetune", "compare", "predict", "explain", "load_run")


def __getattr__(name: str):
    if name in API:
        from medssl import api  # lazy: torch, Lightning

        return getattr(api, name)
    raise AttributeError(f"module 'medssl' has no attribute {name!r}")
