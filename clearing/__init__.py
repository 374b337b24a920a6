"""Clearing and settlement (issue #6; spec §5 batches, §2.4 TACs).

- :mod:`clearing.registry`, :mod:`clearing.inbox`, :mod:`clearing.bills`: operators and devices, the batch inbox
  (raw files by content hash), utility bills (the device API's side);
- :mod:`clearing.ingest`: accepted batches into ``clearing_record``, TACs verified (:mod:`clearing.tacs`), spec §5
  identity (duplicates, conflicts, proof completions) decided by the database's unique indexes, set-wise;
- :mod:`clearing.rules`: the pure rules — classification of a card's record chain, fees, balanced entries;
- :mod:`clearing.clear`: one card-number range of a day: classify, post, lower the card shadows; settlement;
- :mod:`clearing.ledger`: the double-entry ledger, balanced and append-only in the database;
- :mod:`clearing.reconcile`: the issuance feed and the reconciliation identities;
- :mod:`clearing.runs`, :mod:`clearing.tasks`, :mod:`clearing.intake`: runs as database-held stages and tasks, on
  Celery over Redis or in-process; ingest after an upload commits;
- :mod:`clearing.exceptions`: maker-checker resolution of exceptions, audited;
- :mod:`clearing.reports`: the day's report as JSON, CSV, XLSX and PDF, byte-for-byte repeatable.
"""
