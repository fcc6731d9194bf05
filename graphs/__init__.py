"""latentrt.graphs."""
