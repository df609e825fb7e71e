"""Partner Data Gateway: the privacy gateway between internal services and external partners."""

__version__ = "0.1.0"
