"""In the hospital's workflow: results as DICOM objects that land in the film's own study."""
