"""Data only (YAML). Installed as fbnet_zoo.model_configs so the files ship with the package."""
