"""Study files: the YAML schema, loading with profiles and --set overrides, validation, and expansion into
concrete trials with stable config hashes (the users' resume keys)."""
