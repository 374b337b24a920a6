"""Masking of personal data for display: ID numbers ``110***********1234``, phones ``138****0000``."""

from __future__ import annotations


def mask_id(number: str) -> str:
    """Keep the first 3 and last 4 characters of an ID (or social-security) number."""
    if len(number) <= 7:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


def mask_phone(phone: str) -> str:
    """Keep the first 3 and last 4 digits of a phone number."""
    if len(phone) <= 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def mask_name(name: str) -> str:
    """Keep the first character of each word of a name (``张**``, ``Z**** S***``)."""
    return " ".join(word[:1] + "*" * (len(word) - 1) for word in name.split(" ")) if name else ""
