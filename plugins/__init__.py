"""latentrt.plugins."""
