"""Original (CompVis/LDM, OpenCLIP, SGM) single-file checkpoint layouts and their mapping to diffusers names."""
