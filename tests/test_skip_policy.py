"""The skip policy (tests/skip_policy.py) on small inner suites run by pytester: every way of skipping
outside a declared marker fails the run; the declared marker skips with the reason pyproject.toml gives."""

from __future__ import annotations

import pytest

import skip_policy

pytest_plugins = ["pytester"]

SKIPPING = """
import unittest
import pytest


def test_skip_call():
    pytest.skip("not today")


@pytest.mark.skipif(True, reason="flaky")
def test_skipif():
    pass


@pytest.mark.skip
def test_skip_marker():
    pass


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False


@pytest.fixture
def needs_something():
    pytest.skip("fixture says no")


def test_skip_in_fixture(needs_something):
    pass


def test_unittest_skip():
    raise unittest.SkipTest("old style")


def test_importorskip_inside():
    pytest.importorskip("ragloop_no_such_module")
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, pytestconfig: pytest.Config) -> pytest.Pytester:
    """An inner project declaring the same markers as ragloop's pyproject.toml."""
    markers = "".join(f"    {line}\n" for line in pytestconfig.getini("markers"))
    pytester.makeini(f"[pytest]\naddopts = --strict-markers -p skip_policy -rs\nmarkers =\n{markers}")
    return pytester


def test_every_skip_outside_a_declared_marker_fails(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_skipping=SKIPPING)
    result = inner.runpytest_inprocess()
    # a skip in setup (skip/skipif markers, a fixture) fails as an error, one in the test as a failure
    result.assert_outcomes(failed=4, errors=3, skipped=0, xfailed=0)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for reason in ("not today", "flaky", "unconditional skip", "xfail (known bug)", "fixture says no",
                   "old style", "ragloop_no_such_module"):  # fmt: skip
        result.stdout.fnmatch_lines([f"*{reason}*", "*not allowed: skips are allowed only through*gpu*"])


def test_a_module_that_skips_itself_fails_the_run(inner: pytest.Pytester) -> None:
    """The old first line of test_pii.py: an import error in the module under test skipped the suite."""
    inner.makepyfile(
        test_guarded='import pytest\npii = pytest.importorskip("ragloop_no_such_module")\n\n'
        "def test_no_leak():\n    pass\n"
    )
    result = inner.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # "1 error during collection"
    result.assert_outcomes(errors=1, skipped=0)
    result.stdout.fnmatch_lines(["*ERROR collecting test_guarded.py*", "*ragloop_no_such_module*"])


def test_the_declared_marker_skips_with_its_declared_reason(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(skip_policy.ALLOWED_SKIPS, "gpu", lambda: True)  # as on a machine without a GPU
    inner.makepyfile(
        test_gpu="import pytest\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    assert False\n\n"
        "def test_anywhere():\n    pass\n"
    )
    result = inner.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*gpu: needs a CUDA device that torch sees"])


def test_a_marked_test_cannot_skip_itself_where_its_condition_holds(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(skip_policy.ALLOWED_SKIPS, "gpu", lambda: False)  # as on a machine with a GPU
    inner.makepyfile(
        test_gpu='import pytest\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    pytest.skip("gpu: out of memory")\n'
    )
    result = inner.runpytest_inprocess()
    result.assert_outcomes(failed=1, skipped=0)


def test_an_allowed_marker_must_be_declared(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p skip_policy\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "['gpu'] are not declared" in result.stderr.str()
