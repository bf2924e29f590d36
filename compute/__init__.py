"""CLIP Attention Lab: the offline compute stage (``python -m compute``)."""
