"""Test helpers shared by the test modules: a real HTTP target to perform tasks against."""

from .target import HttpTarget, Received, Reply

__all__ = ["HttpTarget", "Received", "Reply"]
