"""ETS, the Ephemeral Token Service: a DPoP-checking gateway on Twisted."""

__version__ = "0.1.0"
