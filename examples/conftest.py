"""Keep the example test suite out of test runs started above it.

``examples/pytest_suite`` fails on purpose under ``--loopwatch``: it is run on
its own (``pytest examples/pytest_suite``, which uses that folder's
pytest.ini and never reads this file), not by ``pytest examples`` or ``pytest .``.
"""

collect_ignore = ["pytest_suite"]
