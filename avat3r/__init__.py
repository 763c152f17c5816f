"""avat3r: Large Animatable Gaussian Reconstruction Model for 3D head avatars (arXiv 2502.20220)."""

__version__ = "0.1.0"
