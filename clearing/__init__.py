"""Clearing and settlement."""
