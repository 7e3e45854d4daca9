"""A skip is allowed only through a marker declared in pyproject.toml; every other skip fails the run.

A suite that skips itself is green and checks nothing: an import error in the module under test, a missing
declared dependency or a forgotten ``skipif`` would turn the zero-leak PII suite into a row of ``s``. So a
skip from ``pytest.skip``, ``skip``/``skipif`` markers, ``importorskip`` (at any level) or an ``xfail``
becomes a failure that says where it came from. The one way to skip is a marker of ``ALLOWED_SKIPS``: its
condition is checked here, before the test runs, and its reason is the marker's description in
``[tool.pytest.ini_options] markers``, so the run says why in the words the project declared.

Loaded by ``tests/conftest.py`` (``pytest_plugins``), so ``make test`` and ``.ci/run`` enforce it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest


@functools.cache
def _torch_sees_no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


# Marker name -> when its tests are skipped. Each must be declared in pyproject.toml with its reason.
ALLOWED_SKIPS: dict[str, Callable[[], bool]] = {"gpu": _torch_sees_no_gpu}

_ALLOWED_SKIP = pytest.StashKey[str]()
HOW = (
    "skips are allowed only through the markers {markers} (declared in pyproject.toml, condition in "
    "tests/skip_policy.py); a declared dependency is imported, not skipped"
)


def declared_markers(config: pytest.Config) -> dict[str, str]:
    """Marker name -> its description, from ``[tool.pytest.ini_options] markers``."""
    declared = {}
    for line in config.getini("markers"):
        name, _, description = line.partition(":")
        declared[name.split("(")[0].strip()] = description.strip()
    return declared


def pytest_configure(config: pytest.Config) -> None:
    undeclared = sorted(set(ALLOWED_SKIPS) - set(declared_markers(config)))
    if undeclared:
        raise pytest.UsageError(f"skip markers {undeclared} are not declared in pyproject.toml's markers")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, unmet in ALLOWED_SKIPS.items():
        if item.get_closest_marker(name) is not None and unmet():
            reason = f"{name}: {declared_markers(item.config)[name]}"
            item.stash[_ALLOWED_SKIP] = reason
            pytest.skip(reason)


# tryfirst makes these the outermost wrappers: they see the report after the skipping plugin has turned
# an xfail into a skip.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report = yield
    allowed = report.when == "setup" and _ALLOWED_SKIP in item.stash
    if report.skipped and not allowed:
        _fail(report, item.config)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if report.skipped:
        _fail(report, collector.config)
    return report


def _fail(report: pytest.TestReport | pytest.CollectReport, config: pytest.Config) -> None:
    if hasattr(report, "wasxfail"):
        what = f"xfail ({report.wasxfail or 'no reason'})"
        del report.wasxfail  # otherwise it is still counted as an expected failure
    else:
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        what = f"skipped: {reason.removeprefix('Skipped: ')}"
    markers = ", ".join(sorted(ALLOWED_SKIPS)) or "(none)"
    report.outcome = "failed"
    report.longrepr = f"{what}\n-> not allowed: {HOW.format(markers=markers)}"
