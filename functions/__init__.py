"""Thin triggers: one Blueprint per domain. Logic lives in `shared/`."""
