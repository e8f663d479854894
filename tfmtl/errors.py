"""The error a malformed config raises (`tfmtl.config` re-exports it)."""


class ConfigError(ValueError):
  """A config file, key or value is malformed; the message names it."""
