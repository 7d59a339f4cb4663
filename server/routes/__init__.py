"""HTTP routes, one module per area. Each exposes ``setup(app)``."""
