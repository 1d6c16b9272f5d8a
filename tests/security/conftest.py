"""The chart tests' `helm` and `render` fixtures, for every chart test module."""

from tests.security.test_chart import helm, render  # noqa: F401 - fixtures, found by name
