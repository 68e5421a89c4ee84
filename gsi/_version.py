"""The one place the gsi version is written; packaging, both CLIs and both packages read it."""

__version__ = "0.2.0"
