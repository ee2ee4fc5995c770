import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Tests use few threads: deterministic and kind to a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# Property tests draw the same examples on every run: a red CI is reproducible.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
