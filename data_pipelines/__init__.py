"""Preference data: readers, adapters, builders, tokenisation and collators (imports nothing above it)."""
