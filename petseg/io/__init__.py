"""Images and studies in and out: images with their geometry and header checks, case
discovery and reading, DICOM to SUV / HU, DICOM SEG out."""
