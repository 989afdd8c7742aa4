"""Shared pytest configuration: plugins providing the suite's fixtures."""

pytest_plugins = ["tests.fix_pg", "tests.fix_sidecar", "tests.fix_udp", "tests.fix_http"]
