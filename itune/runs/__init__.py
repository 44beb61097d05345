"""The run directory: file names (files), writers (write), readers (read), lineage and tracking."""
