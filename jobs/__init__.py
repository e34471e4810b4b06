"""Entry points: python -m jobs.<verb>."""
