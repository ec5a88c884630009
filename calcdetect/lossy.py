"""Whether an image's pixels went through lossy compression, and how hard.

Lossy codecs remove noise and add artefacts at edges, which every detector's
contrast tests are sensitive to: the radiograph detector judges such images more
strictly (``docs/xray.md``, round 8), and the CT detector warns (``docs/algorithms.md``).
"""

from __future__ import annotations

from pydicom import uid

from .image import Image

__all__ = ["lossy_compressed", "compression_ratio"]

#: Transfer syntaxes that are always lossy (JPEG baseline / extended, JPEG-LS near-lossless).
LOSSY_TRANSFER_SYNTAXES = frozenset({str(uid.JPEGBaseline8Bit), str(uid.JPEGExtended12Bit),
                                     str(uid.JPEGLSNearLossless)})


def lossy_compressed(image: Image) -> bool:
    """Whether the image's pixels went through lossy compression.

    DICOM says so with ``LossyImageCompression`` "01" (kept even after decompression, as
    in RG1_UNCI) or a transfer syntax that is always lossy; a JPEG raster file
    (``.jpg``/``.jpeg``, which :func:`calcdetect.io.raster.load_raster` records as the
    ``format``) always is.  A PNG or TIFF file, or a DICOM file without the tag, is not
    taken as lossy.

    Parameters
    ----------
    image : Image

    Returns
    -------
    bool
    """
    meta = image.metadata or {}
    return (str(meta.get("LossyImageCompression", "")).strip() == "01"
            or str(meta.get("TransferSyntaxUID", "")) in LOSSY_TRANSFER_SYNTAXES
            or str(meta.get("format", "")).lower() in ("jpg", "jpeg"))


def compression_ratio(image: Image) -> float | None:
    """The overall lossy compression ratio recorded in ``LossyImageCompressionRatio``.

    Several values (the image was compressed more than once) compound: their product.

    Parameters
    ----------
    image : Image

    Returns
    -------
    float or None
        ``None`` when the tag is absent or not a positive number.
    """
    value = (image.metadata or {}).get("LossyImageCompressionRatio")
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else str(value).split("\\")
    ratio = 1.0
    try:
        for v in values:
            ratio *= float(v)
    except (TypeError, ValueError):
        return None
    return ratio if ratio > 0 else None
