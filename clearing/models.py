"""Clearing tables."""
