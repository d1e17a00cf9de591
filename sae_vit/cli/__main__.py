"""``python -m sae_vit.cli`` (what torchrun launches)."""

from sae_vit.cli.app import main

main()
