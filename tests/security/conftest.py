"""The chart tests' `helm`, `render` and `refused` fixtures, for every chart test module."""

from tests.security.test_chart import helm, refused, render  # noqa: F401 - fixtures, found by name
