"""Builders and checks the test modules share. Test modules import these, never one another; shared fixtures
live in tests/conftest.py."""
