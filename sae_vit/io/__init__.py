"""The io layer: activation caches, image sources, labelled datasets, foreign SAE formats, the Hub, resolving
SAE references. Imports only :mod:`sae_vit.core`."""
