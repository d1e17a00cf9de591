"""The io layer: activation caches, image sources, labelled datasets, foreign SAE formats, the Hub, resolving
SAE references. Imports only :mod:`sae_vit.core`."""

# Installs the one SAE resolver into SAE.load, so hf:// and foreign folders load once any io module is imported.
from sae_vit.io import resolve as _resolve  # noqa: F401
