"""opos-monitor: HTCondor job failure monitoring for production teams."""

__version__ = "0.1.0"
