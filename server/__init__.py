"""Showroom server: app factory, CLI, config, routes, auth, metrics, embedded services."""
