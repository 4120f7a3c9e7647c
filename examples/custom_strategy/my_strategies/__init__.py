"""Example user strategies for edgefleet (see docs/strategies.md)."""

from my_strategies.clipped_mean import ClippedMean

__all__ = ["ClippedMean"]
