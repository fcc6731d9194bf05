"""latentrt.samplers."""
