"""ninefold: high availability for ordinary services across a handful of machines."""

__version__ = "0.1.0"
