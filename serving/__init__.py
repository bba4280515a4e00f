"""Thin Flask layer that runs fsjax experiments over real HTTP."""
