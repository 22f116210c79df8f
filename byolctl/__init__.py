"""byolctl: the command line of the byol library (Typer + rich)."""

from byol import __version__

__all__ = ["__version__"]
