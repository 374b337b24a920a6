"""Issuance: residents, social security, keys, personalisation, card life cycle."""
