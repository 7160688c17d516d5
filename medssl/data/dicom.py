"""DICOM files read as medssl reads every picture: decoded by pydicom (JPEG, JPEG-LS, JPEG 2000
and RLE through its pylibjpeg plugins, python-gdcm where installed as a fallback), the modality
LUT applied (rescale slope and intercept), windowed (`windowing`), MONOCHROME1 inverted, colour
converted to RGB. A multi-frame file gives its first frame, and `medssl check` says so (a cine
loop's frames are one moment each; a volume is not a picture, and medssl does not guess a slice).

Files are DICOM by their suffix (`.dcm`, `.dicom`) or, without one (or with a numeric one, as in
UID-named exports), by the `DICM` marker after their 128-byte preamble.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from medssl.data.windowing import Window, to_uint8, to_unit

DICOM_SUFFIXES = {".dcm", ".dicom"}
GREY = {"MONOCHROME1", "MONOCHROME2"}
COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"}
PALETTE = "PALETTE COLOR"
# What decodes each compressed transfer syntax (pip names): pydicom names the syntax, this the fix.
JPEG_FAMILY = "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
PLUGINS = {"JPEG 2000": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)", "JPEG": JPEG_FAMILY,
           "RLE": "pylibjpeg pylibjpeg-rle (or python-gdcm)"}


class DicomError(ValueError):
    """Why a DICOM file cannot be used, in words for `medssl check`."""


def maybe_dicom_name(name: str) -> bool:
    """A file name that may hold DICOM: a DICOM suffix, no suffix, or a numeric one (UIDs)."""
    suffix = Path(name).suffix.lower()
    return suffix in DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit()


def has_preamble(path: Path | str) -> bool:
    """True where the file carries DICOM's marker: `DICM` after a 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_dicom(path: Path | str, data: bytes | None = None) -> bool:
    """A DICOM suffix, or a name that may be DICOM's and the marker (in `data`, the file's
    bytes where already read, else read from the file)."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if not maybe_dicom_name(str(path)):
        return False
    return data[128:132] == b"DICM" if data is not None else has_preamble(path)


def _read(src):
    import pydicom
    from pydicom.errors import InvalidDicomError

    # pydicom logs each decoder plugin that fails with a traceback, even where the next plugin
    # decodes the file (GDCM refuses 12-bit JPEG Extended, pylibjpeg then reads it): the reason a
    # file cannot be used reaches the user once, in DicomError's words, instead.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)

    try:
        return pydicom.dcmread(src)
    except InvalidDicomError:
        raise DicomError("not a DICOM file: no DICM marker after the 128-byte preamble. Fix: "
                         "re-export it as a DICOM file (Part 10, with its file header)") \
            from None
    except Exception as exc:  # pydicom reports a cut-off header in several exception types
        raise DicomError(f"truncated or corrupt DICOM header ({type(exc).__name__}: {exc})") \
            from None


def header(path: Path | str) -> dict:
    """Rows, columns, frames and PatientID from the header alone (no pixel data read)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"size": (int(ds.get("Columns", 0)), int(ds.get("Rows", 0))),
            "frames": int(ds.get("NumberOfFrames", 1) or 1),
            "patient": str(ds.get("PatientID", "") or "").strip()}


def _check_decodable(ds) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None:
        raise DicomError("no transfer syntax in its file meta (0002,0010): the file was "
                         "written without DICOM's file header. Fix: re-export it from the "
                         "source as a DICOM file (Part 10)")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DicomError("no pixel data: a DICOM object without a picture (a report, a "
                         "structure set). Fix: leave it out of the image folder")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GREY | COLOUR | {PALETTE}:
        raise DicomError(f"photometric interpretation {photometric or '(none)'!r} is not "
                         f"supported (medssl reads {', '.join(sorted(GREY | COLOUR))} and "
                         f"{PALETTE}). Fix: convert the file to one of them, or leave it out")
    if not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        package = next((v for k, v in PLUGINS.items() if syntax.name.startswith(k)),
                       "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)")
        raise DicomError(f"its pixel data is compressed as {syntax.name} ({syntax}) and no "
                         f"installed package decodes it. Fix: pip install {package}")


def _pixels(ds, frames: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except Exception as exc:  # each decoder plugin raises its own kinds
        said = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise DicomError(f"truncated or corrupt pixel data ({type(exc).__name__}: "
                         f"{said[:300]})") from None


def _to_8_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    """Colour samples of `bits` bits as 0-255 (colour is not windowed: it is shown as stored)."""
    if arr.dtype == np.uint8:
        return arr
    return to_uint8(arr.astype(np.float64) / float(2 ** bits - 1))


def _own_window(ds) -> tuple[float, float] | None:
    """The file's first window (centre, width), where it has one."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    first = (lambda v: float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str)
             else float(v))
    try:
        return first(centre), first(width)
    except (TypeError, ValueError, IndexError):
        return None  # an unreadable window: auto falls back to percentiles


def _grey(ds, arr: np.ndarray, window: Window) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window.mode == "auto" and "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        unit = apply_voi(values, ds, index=0).astype(np.float64) / float(2 ** bits - 1)
    else:
        unit = to_unit(values, window, _own_window(ds))
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":  # white is low: turned over
        unit = 1.0 - unit
    return to_uint8(unit)


def read_dicom(src: Path | str | bytes, window: Window) -> tuple[np.ndarray, int]:
    """The picture (`H x W` grey or `H x W x 3` RGB, uint8) and the file's number of frames.
    DicomError, in words, where the file cannot be used."""
    from pydicom.pixels import apply_color_lut

    ds = _read(io.BytesIO(src) if isinstance(src, bytes) else src)
    try:
        _check_decodable(ds)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        arr = _pixels(ds, frames)
        photometric = str(ds.PhotometricInterpretation)
        if photometric == PALETTE:
            rgb = apply_color_lut(arr, ds)
            return _to_8_bits(rgb, int(ds.RedPaletteColorLookupTableDescriptor[2])), frames
        if photometric in COLOUR:  # pydicom converts YBR to RGB
            return _to_8_bits(arr, int(ds.get("BitsStored", 8))), frames
        return _grey(ds, arr, window), frames
    except DicomError:
        raise
    except Exception as exc:  # a header value pydicom cannot parse (badVR: NumberOfFrames '1A')
        raise DicomError(f"an unreadable header value ({type(exc).__name__}: {exc})") from None


def patient_groups(table) -> int:
    """Group a table's DICOM pictures by their PatientID where the layout gave them no group of
    their own (the group is the path), so that no split divides a patient. Returns how many
    pictures got one; a file whose header cannot be read keeps its path (the check pass names
    it)."""
    rows = table.samples
    own = rows["group"] == rows["path"]
    changed = 0
    for i in rows.index[own]:
        path = table.root / rows.at[i, "path"]
        if not is_dicom(path):
            continue
        try:
            patient = header(path)["patient"]
        except Exception:  # unreadable: the decode pass reports it with the reason
            continue
        if patient:
            rows.at[i, "group"] = f"PatientID {patient}"
            changed += 1
    if changed:
        groups = rows.loc[own, "group"]
        patients = groups[groups.str.startswith("PatientID ")].nunique()
        table.notes.append(f"{changed} DICOM picture(s) of {patients} patient(s) grouped by "
                           "PatientID, so no split divides a patient")
    return changed
