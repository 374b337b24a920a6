"""Shared back-office infrastructure: the database, the unit of work and the one error hierarchy.

Issuance, clearing and the API build on it; it imports nothing of theirs.
"""
