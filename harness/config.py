"""`from harness.config import Config`, as the plugin's README example writes it."""

from harness.run.config import Config

__all__ = ["Config"]
