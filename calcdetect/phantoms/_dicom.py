"""What the phantom DICOM writers share: the data set skeleton, the grey pixel module and
the atomic write.

Each writer (CT series, radiograph, ultrasound) adds its own modality's attributes
between :func:`new_dataset` and :func:`write`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def new_dataset(sop_class_uid: str, modality: str, patient_name: str, *,
                study_uid: str | None = None, series_uid: str | None = None) -> Dataset:
    """A data set with its file meta (explicit VR little endian), a new SOP instance
    UID, the study and series UIDs (new ones unless given), modality and a phantom
    patient (PatientID ``PHANTOM``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = "PHANTOM"
    return ds


def set_grey_pixels(ds: Dataset, stored: np.ndarray, *, bits_stored: int | None = None,
                    photometric: str = "MONOCHROME2") -> None:
    """Rows, Columns, the grey Image Pixel module and PixelData of a 2D integer array
    (its dtype gives BitsAllocated and PixelRepresentation)."""
    bits = stored.dtype.itemsize * 8
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    ds.PixelData = stored.tobytes()


def write(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM file (preamble and file meta), atomically."""
    import pydicom

    from ..outputs import write_bytes_atomic

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return write_bytes_atomic(Path(path), buf.getvalue())
