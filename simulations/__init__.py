"""Synthetic phantoms, incremental-site scenarios, the simulation runner and the CLI."""
