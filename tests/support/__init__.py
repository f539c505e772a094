"""Helpers shared by the tests: tiny models, running the real stack."""
