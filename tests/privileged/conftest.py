import os

import pytest

from tests.conftest import skip_or_fail


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        skip_or_fail("needs real root")
