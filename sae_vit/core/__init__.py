"""The core layer: the SAE and its checkpoint format, kernels, trainer, metrics, backbone, text head, edits.

Imports nothing from the rest of sae-vit (layers: core <- io <- world <- analysis <- pipeline <- cli).
"""
