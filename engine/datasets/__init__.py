"""Data files shipped with the package (read by `engine.data`)."""
