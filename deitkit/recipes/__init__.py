"""Named recipes: YAML files read by `deitkit.config.build_config`."""
