"""retention: declarative retention policies for Docker/OCI registries."""

__version__ = "0.1.0"
