"""Hypothesis profiles, loaded by conftest.py.

- ``ci``, loaded when CI is set (as Hypothesis itself does): derandomised, so a CI run
  replays the same examples every time and a red CI is never luck.
- ``fuzz`` (``scripts/fuzz.sh``): random examples from the seed the script prints, and
  ``HYPOTHESIS_EXAMPLES_SCALE`` times as many as each test asks for, so runs outside CI
  explore further than CI ever does.
- anything else: Hypothesis's default (random, each test's own example count).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
if os.environ.get("CI"):
    settings.load_profile("ci")  # our own "ci", whatever a Hypothesis release calls by that name


def examples_scale() -> int:
    scale = int(os.environ.get("HYPOTHESIS_EXAMPLES_SCALE", "1"))
    if scale < 1:
        raise ValueError(f"HYPOTHESIS_EXAMPLES_SCALE={scale}: must be a positive integer")
    return scale


def pytest_collection_modifyitems(config, items):
    """Scale every property test's max_examples, even those that set it in @settings
    (an explicit value there would otherwise override any profile)."""
    scale = examples_scale()
    if scale == 1:
        return
    scaled = set()
    for item in items:
        test = getattr(item, "obj", None)
        if not getattr(test, "is_hypothesis_test", False) or id(test) in scaled:
            continue  # parametrized tests share one function: scale it once
        scaled.add(id(test))
        # Hypothesis reads this attribute at call time; it has no public way to
        # override an explicit @settings(max_examples=...).
        current = test._hypothesis_internal_use_settings
        test._hypothesis_internal_use_settings = settings(current, max_examples=current.max_examples * scale)
