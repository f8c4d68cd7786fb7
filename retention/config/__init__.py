"""The policy file: YAML to the core's ``Policy``, every error with file, line and key path."""
