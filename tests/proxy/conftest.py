"""Fixtures of the egress proxy tests, defined in proxy_harness.py."""

from proxy_harness import fake_partner, harness, profiles_dir, settings

__all__ = ["fake_partner", "harness", "profiles_dir", "settings"]
