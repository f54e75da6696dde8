"""Test-wide setup: fully offline, caches in a temp dir, small models and generated images.

Offline means sealed, not "no network happens to be there": ``CLIPCOMPARE_OFFLINE=1`` switches every
download off, and a socket guard (``sealed/netguard.py``, inherited by every Python subprocess through
``sealed/sitecustomize.py``) fails the test that reaches for another machine, and the run at its end.
So ``make test`` runs and skips the same tests, with the same weights, on a networked machine.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Set before torch/open_clip/huggingface_hub are imported anywhere: no test may touch the network
# or a developer's real caches.
_TMP = Path(tempfile.mkdtemp(prefix="clipcompare-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CLIPCOMPARE_OFFLINE"] = "1"  # no loader downloads anything (subprocesses inherit it)
os.environ["TORCH_HOME"] = str(_TMP / "torch")
os.environ["HF_HOME"] = str(_TMP / "hf")
os.environ["XDG_CACHE_HOME"] = str(_TMP / "xdg")
# a developer's cache locations would override HF_HOME and let their downloaded models into the tests
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE"):
    os.environ.pop(_var, None)
os.environ["CLIPCOMPARE_CACHE"] = str(_TMP / "cache")
os.environ["HOME"] = str(_TMP / "home")  # ~/.cache/clip lookups
os.environ.setdefault("OMP_NUM_THREADS", "2")

# The socket guard, here and (through PYTHONPATH's sitecustomize) in every Python subprocess.
_SEALED = Path(__file__).resolve().parent / "sealed"
sys.path.insert(0, str(_SEALED))
import netguard  # noqa: E402

_NET_LOG = _TMP / "network-attempts.log"
_NET_LOG.touch()
os.environ[netguard.ENV] = str(_NET_LOG)
os.environ["PYTHONPATH"] = os.pathsep.join([str(_SEALED), *filter(None, [os.environ.get("PYTHONPATH")])])
netguard.install(_NET_LOG)

from helpers import make_image_folder  # noqa: E402  (needs the env above)


def _network_attempts(start: int = 0) -> str:
    with open(_NET_LOG, encoding="utf-8") as f:
        f.seek(start)
        return f.read()


@pytest.fixture(autouse=True)
def _sealed_off_from_the_network():
    """Fail the test during which anything (this process or a subprocess) reached for another machine."""
    start = _NET_LOG.stat().st_size
    yield
    attempts = _network_attempts(start)
    if attempts:
        pytest.fail(f"the test suite is offline, yet this test reached for the network:\n{attempts}", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    # attempts outside any test (collection, session fixtures, stray subprocesses) fail the run too
    if _network_attempts() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    attempts = _network_attempts()
    if attempts:
        terminalreporter.section("network access attempted (the suite is offline)", red=True, bold=True)
        terminalreporter.write(attempts)


def pytest_unconfigure(config):
    # after the summary has read the network log: the sealed caches and home go with the session
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_clip():
    """A random-weight tiny CLIP RN (QuickGELU, OpenAI layout) as a LoadedModel."""
    import torch

    from clipcompare.models.loading import load_model
    from clipcompare.models.spec import parse_spec

    torch.manual_seed(0)
    return load_model(parse_spec("clip:tiny-RN-quickgelu"), allow_random=True)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Generated JPEGs in 3 ImageNet wnid folders, 4 images each."""
    root = tmp_path_factory.mktemp("imgs")
    make_image_folder(root, ["n01440764", "n01443537", "n02102040"], per_class=4)
    return root
