"""The examples in docstrings run and hold."""

import doctest

import pytest

import moco.evaluate
import moco.safe_yaml


@pytest.mark.parametrize("module", [moco.safe_yaml, moco.evaluate])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
