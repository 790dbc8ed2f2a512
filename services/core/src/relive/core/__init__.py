"""Plumbing shared by the relive services: configuration, errors, serving, storage."""
