"""The samplers against their exact conditional laws: chi-square, acceptance rate, vmap == loop, same key.

Each scheme's jitted, vmapped sampler is run on a batch of positions: three different
positions are compared with unbatched calls (and a repeated call with the same key);
4,000 copies of a fourth position with fixed drafts are compared with
:func:`output_distribution` (chi-square on the tokens, z-test on the acceptance rate).
Together with the enumeration tests (the laws average to ``p``) this shows the
sampled tokens follow ``p``.
"""

import pytest

from jaxrob.specdec import _schemes as sch
import specdec_cases as cases

pytest.importorskip("scipy")

slow = pytest.mark.slow


@pytest.mark.parametrize("scheme, options, v, k, identical, replacement", [
    (sch.single_draft, {}, 4, 2, False, True),
    (sch.specinfer, {}, 4, 3, False, True),
    (sch.specinfer, {"replacement": False}, 5, 3, True, False),
    (sch.spectr, {}, 5, 3, True, True),
    pytest.param(sch.spectr, {}, 4, 2, True, True, marks=slow),
    pytest.param(sch.specinfer, {}, 5, 2, True, True, marks=slow),
], ids=lambda x: getattr(x, "__name__", None))
def test_baseline_samplers_follow_their_laws(scheme, options, v, k, identical, replacement):
    cases.check_sampler_against_law(scheme, options, v=v, k=k, identical=identical, replacement=replacement)
