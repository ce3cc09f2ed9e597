"""Tooling for people working on the project; not shipped in any runtime image."""
