"""Shared pieces of the test suite: dataset writers, the tiny model's configs and runners, session checks."""
