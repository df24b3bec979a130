"""End-to-end runs in a real X window (``make e2e``); not part of ``make test``."""


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "e2e: drives the real app under Xvfb with xdotool (make e2e)")
