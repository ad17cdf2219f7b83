import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import oracle`

# Bounded property-test budgets: the whole suite must stay fast on 2 cores.
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def photo(tmp_path, samples):
    """A small real photo (a crop of the astronaut) so the tests stay fast."""
    from PIL import Image

    path = tmp_path / "face.png"
    Image.open(samples / "astronaut.png").crop((150, 40, 246, 136)).save(path)
    return path
