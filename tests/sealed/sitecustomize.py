"""Installed in every Python subprocess a test starts (conftest puts this folder on PYTHONPATH):
the socket guard of :mod:`netguard`, logging to the file ``CLIPCOMPARE_TEST_NETGUARD`` names.

Outside the test suite the variable is unset and this only hands over to the ``sitecustomize``
it shadows, if the interpreter has one (Debian's does)."""

import importlib.machinery
import importlib.util
import os
import sys

if os.environ.get("CLIPCOMPARE_TEST_NETGUARD"):
    import netguard

    netguard.install(os.environ["CLIPCOMPARE_TEST_NETGUARD"])

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or os.curdir) != _here])
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
