"""childface: a self-hosted identity platform that recognises enrolled children by face."""

__version__ = "0.1.0"
