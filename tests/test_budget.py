"""frejax.compression.budget: the plan never exceeds the budget, the auto rule, explicit values."""

from hypothesis import given, settings
from hypothesis import strategies as st

from frejax.compression import budget as budget_lib
from frejax.compression.base import VideoGeometry

from compressor_helpers import MODES, paper


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(1, 16), st.integers(1, 16), st.data())
def test_plan_never_exceeds_the_budget(frames, h, w, data):
    """Pure python, so many cases: auto plans fit, and fill the budget in absorbed mode."""
    geometry = VideoGeometry(frames, (h, w), 8)
    budget = data.draw(st.integers(h * w, geometry.full_tokens))
    for name, mode in MODES:
        if name == "temporal_dct_only" and frames == 1:
            continue  # no residual track in a one-frame video (an error: tests/test_fre_res.py)
        plan = budget_lib.make_plan(geometry, budget, paper(mode), variant=name)
        assert plan.total_tokens <= budget
        s, seg_len = plan.num_segments, plan.segment_len
        assert s * seg_len >= frames > (s - 1) * seg_len  # pads, never drops, frames
        if name == "anchors_only" or mode.get("output") == "absorbed":
            assert plan.num_segments == -(-frames // -(-frames // min(frames, budget // (h * w))))
        if mode.get("output") == "dual" and plan.num_coeffs:
            # Filling rule: one more coefficient row would not fit (or K is at L-1).
            room = budget - plan.anchor_tokens
            assert (plan.num_coeffs == plan.window_len or room - plan.residual_tokens
                    < plan.num_segments * plan.time_windows * plan.pooled_tokens)
        if mode.get("allocation") == "uniform" and plan.num_coeffs:
            # Two time windows per clip, unless two leave no room for a coefficient.
            fits = mode.get("output") == "absorbed" or budget - plan.anchor_tokens >= 2
            two = plan.num_segments == 1 and plan.segment_len >= 3 and fits
            assert plan.time_windows == (2 if two else 1)


def test_auto_plan_rule():
    g = VideoGeometry(32, (16, 16), 64)
    absorbed = budget_lib.make_plan(g, 1024, paper(output="absorbed"))
    assert (absorbed.segment_len, absorbed.num_segments, absorbed.num_coeffs) == (8, 4, 4)
    assert absorbed.total_tokens == 1024
    dual = budget_lib.make_plan(g, 1024, paper())  # the paper's split
    assert (dual.num_segments, dual.segment_len, dual.num_coeffs, dual.pool) == (2, 16, 4, 2)
    assert dual.time_windows == 1  # two segments: already two windows per clip
    assert dual.anchor_tokens == 512 and dual.total_tokens == 1024
    only = budget_lib.make_plan(g, 1024, paper(), variant="temporal_dct_only")
    assert only.anchor_tokens == 0 and only.residual_tokens == 1024
    # Explicit values are honoured.
    plan = budget_lib.make_plan(g, 2048, paper(output="dual", segment_len=8, num_coeffs=3))
    assert (plan.segment_len, plan.num_coeffs, plan.pool) == (8, 3, 2)
    assert plan.total_tokens == 1024 + 4 * 3 * 64
    # One segment: its residual track is cut into two time windows of 8 steps.
    one = budget_lib.make_plan(VideoGeometry(16, (4, 4), 8), 32, paper())
    assert (one.num_segments, one.time_windows, one.window_len, one.num_coeffs, one.pool) == (
        1, 2, 8, 2, 2)
    assert one.residual_tokens == 16 and one.residual_slots == 4
    one = budget_lib.make_plan(VideoGeometry(16, (4, 4), 8), 32, paper(time_windows=1))
    assert (one.time_windows, one.num_coeffs, one.pool) == (1, 4, 2)
    # Two windows that leave no room for a coefficient fall back to one.
    tight = budget_lib.make_plan(VideoGeometry(16, (1, 1), 8), 2, paper())
    assert (tight.time_windows, tight.num_coeffs) == (1, 1)
    # Full budget in dual mode: L=2, K=1, p=1 uses every token.
    full = budget_lib.make_plan(g, g.full_tokens, paper(output="dual"))
    assert (full.segment_len, full.num_coeffs, full.pool) == (2, 1, 1)
    assert full.total_tokens == g.full_tokens


def test_default_plan_is_the_natural_video_split():
    """Segment-mean anchors (half the budget, as the paper's rule) and energy-chosen
    coefficients."""
    g = VideoGeometry(32, (16, 16), 64)
    plan = budget_lib.make_plan(g, 1024, None)
    assert plan.mean_anchors and plan.num_segments == 2 and plan.time_windows == 1
    assert (plan.num_coeffs, plan.selected) == (15, 256) and plan.total_tokens == 1024
    sixteen = budget_lib.make_plan(g, 512, None)
    assert sixteen.num_segments == 1 and sixteen.selected == 256
