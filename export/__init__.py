"""latentrt.export."""
