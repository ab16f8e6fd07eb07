"""Hooks: one client each, built lazily."""
