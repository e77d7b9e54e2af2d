"""Makes ``_sampling_cases.py`` importable as ``specdec_cases`` (pytest runs in importlib mode,
so sibling test modules are not on ``sys.path``)."""

import importlib.util
import pathlib
import sys

_spec = importlib.util.spec_from_file_location("specdec_cases", pathlib.Path(__file__).with_name("_sampling_cases.py"))
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)
