"""Reliability and security tests (issue #9): faults, bad input, secrets and access, on loopback."""
