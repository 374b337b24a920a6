"""Issuance tables."""
