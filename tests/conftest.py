"""Test-session setup: 8 host devices for the multi-device tests.

XLA reads the flag once, when the backend starts, so it is set before any test
module imports jax.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
