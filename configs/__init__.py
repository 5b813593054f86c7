"""Built-in YAML configs (package data): `base.yaml` holds every default, the rest are minimal diffs."""
