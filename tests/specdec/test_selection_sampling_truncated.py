"""The truncated-IS samplers (truncated LP, truncated alphabet) against their exact laws.

Same checks as ``test_selection_sampling.py``: vmap == loop, same key -> same output,
chi-square of the tokens and z-test of the acceptance rate against
:func:`output_distribution` given fixed drafts.
"""

import pytest

from jaxrob.specdec import _schemes as sch
import specdec_cases as cases

pytest.importorskip("scipy")

slow = pytest.mark.slow


@pytest.mark.parametrize("scheme, options, v, k, identical", [
    (sch.truncated_is, {"s": 2}, 5, 3, False),
    pytest.param(sch.truncated_is, {"s": 2, "alphabet": 4}, 6, 2, True, marks=slow),
    pytest.param(sch.truncated_is, {"s": 3, "alphabet": 5}, 9, 3, True, marks=slow),
], ids=lambda x: getattr(x, "__name__", None))
def test_truncated_samplers_follow_their_laws(scheme, options, v, k, identical):
    cases.check_sampler_against_law(scheme, options, v=v, k=k, identical=identical, unbatched_law_inputs=True)
