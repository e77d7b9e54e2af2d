"""The exact LP samplers (optimal coupling, canonical IS) against their exact laws.

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
    (sch.canonical_is, {}, 4, 2, True),
    pytest.param(sch.lp_optimal, {}, 4, 2, False, marks=slow),
    pytest.param(sch.lp_optimal, {}, 4, 3, True, marks=slow),
    pytest.param(sch.canonical_is, {}, 4, 3, False, marks=slow),
], ids=lambda x: getattr(x, "__name__", None))
def test_lp_samplers_follow_their_laws(scheme, options, v, k, identical):
    cases.check_sampler_against_law(scheme, options, v=v, k=k, identical=identical, unbatched_law_inputs=True)
