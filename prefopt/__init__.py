"""prefopt: preference optimization and reward modelling."""
__version__ = "0.1.0"
