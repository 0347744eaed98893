"""Widgets of the console: one file each."""
