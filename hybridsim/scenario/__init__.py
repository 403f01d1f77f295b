"""The scenario language: typed spec, distributions and per-episode sampling, validation, event triggers and actions."""
