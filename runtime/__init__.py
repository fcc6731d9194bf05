"""latentrt.runtime."""
