"""The size of the app tests' tiny model (the `tiny_model` fixture of tests/conftest.py)."""

SIZE = 16  # the tiny model's sample size
