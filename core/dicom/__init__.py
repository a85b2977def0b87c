"""DICOM in and out for prediction at hospitals.

``files`` finds and reads a folder's DICOM files as hospitals send them (compressed,
with or without the preamble); ``series`` reads a CT series folder into a RAS+ NIfTI
image and its sorted headers; ``seg`` and ``rtstruct`` write a label map on that grid as
a DICOM Segmentation or an RT Structure Set of the source series; ``codes`` names the
structures in SNOMED CT and ``tg263`` in AAPM TG-263; ``ct_writer`` writes a NIfTI CT as
a DICOM series (test data, demonstrations).
"""
