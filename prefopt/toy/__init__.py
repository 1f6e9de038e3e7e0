"""Toy games (tabular bandits) used by acceptance tests of the online optimizers."""
