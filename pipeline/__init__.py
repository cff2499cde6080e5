"""pipeline: train, export, verify and bulk-classify handwritten digits."""

__version__ = "0.1.0"
