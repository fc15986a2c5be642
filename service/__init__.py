"""tasks: a small, fast, twelve-factor tasks API (FastAPI on Redis)."""

__version__ = "0.1.0"
