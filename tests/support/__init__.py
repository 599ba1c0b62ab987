"""Test helpers that several test folders can use (servers, certificates)."""
