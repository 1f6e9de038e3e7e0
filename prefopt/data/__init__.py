"""Prompt sources for online training (:mod:`prefopt.data.prompts`)."""
