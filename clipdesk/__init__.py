"""clipdesk: search and organise a personal photo library with CLIP, on your own machine."""
__version__ = "0.1.0"
