"""The pytest plugin's parts (private): settings, test windows, results, rendering.

The hooks themselves live in :mod:`loopwatch.pytest_plugin`, the module pytest loads.
"""
