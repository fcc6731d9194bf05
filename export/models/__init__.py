"""latentrt.export.models."""
