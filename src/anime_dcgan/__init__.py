"""anime-dcgan: a reproducible DCGAN pipeline that learns to draw 64x64 anime faces."""

__version__ = "0.1.0"
