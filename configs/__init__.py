"""Model presets (models/*.toml) and device datasheets (devices/*.toml): the package data `roofline.configs`."""
