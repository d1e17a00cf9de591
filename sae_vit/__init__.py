"""sae-vit: sparse autoencoders on CLIP vision transformers."""
__version__ = "0.1.0"
