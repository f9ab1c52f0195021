"""Fixtures of the command tests, shared with the tests of the modules the commands call."""

from analysis.conftest import analyze, two_images  # noqa: F401  (fixtures)
from test_adaptation import base  # noqa: F401
from test_convert import small_published  # noqa: F401
from test_export import guided_model  # noqa: F401
from test_prior import prior_run  # noqa: F401
