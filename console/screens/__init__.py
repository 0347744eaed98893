"""Screens of the console: one file each."""
