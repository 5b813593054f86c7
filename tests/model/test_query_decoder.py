"""Mixed query decoder: output structure, the attention-mask rule and its point -> superpoint conversion."""

from __future__ import annotations

import pytest
import torch

from bifusion.model.query_decoder import (
    ESAM_MASK_LEVELS,
    MaskedCrossAttention,
    MaskLevel,
    MixedQueryDecoder,
    blocked_from_mask_logits,
    superpoint_blocked_from_point_mask,
)

TINY = dict(in_channels=8, d_model=16, num_heads=2, ffn_channels=32, num_layers=3)


def run_decoder(decoder: MixedQueryDecoder, num_points: int, num_superpoints: int, query_superpoints: torch.Tensor):
    superpoint_ids = torch.arange(num_points) % num_superpoints
    return decoder(
        torch.randn(num_superpoints, 8),
        torch.randn(num_points, 8),
        torch.randn(num_points, 3),
        superpoint_ids,
        torch.rand(num_points) * 2.0,
        query_superpoints,
    )


@pytest.mark.parametrize(("num_points", "num_superpoints", "num_queries"), [(50, 7, 7), (120, 15, 9), (33, 3, 1)])
def test_decoder_outputs_four_levels_coarse_to_fine_with_the_right_shapes(
    num_points: int, num_superpoints: int, num_queries: int
) -> None:
    torch.manual_seed(0)
    decoder = MixedQueryDecoder(**TINY, num_classes=5, num_semantic_classes=11)
    query_superpoints = torch.randperm(num_superpoints)[:num_queries]

    output = run_decoder(decoder, num_points, num_superpoints, query_superpoints)

    assert [level.level for level in output.levels] == list(ESAM_MASK_LEVELS)
    for prediction in output.levels:
        width = num_superpoints if prediction.level is MaskLevel.SUPERPOINT else num_points
        assert prediction.class_logits.shape == (num_queries, 6)
        assert prediction.mask_logits.shape == (num_queries, width)
    assert output.final is output.levels[-1]
    assert output.semantic_logits.shape == (num_queries, 12)
    assert output.queries.shape == (num_queries, 16)
    assert torch.equal(output.query_superpoints, query_superpoints)


def test_decoder_accepts_a_frame_without_queries() -> None:
    decoder = MixedQueryDecoder(**TINY, num_classes=1, num_semantic_classes=4)

    output = run_decoder(decoder, 20, 4, torch.zeros(0, dtype=torch.long))

    assert output.final.class_logits.shape == (0, 2)
    assert output.final.mask_logits.shape == (0, 20)
    assert output.semantic_logits.shape == (0, 5)


def test_mask_levels_must_match_the_layers_and_end_at_point_level() -> None:
    with pytest.raises(ValueError, match="mask_levels"):
        MixedQueryDecoder(**TINY, mask_levels=(MaskLevel.SUPERPOINT, MaskLevel.POINT))
    with pytest.raises(ValueError, match="last level"):
        MixedQueryDecoder(**TINY, mask_levels=(MaskLevel.POINT,) * 3 + (MaskLevel.SUPERPOINT,))


def test_queries_are_blocked_outside_their_previous_mask_and_empty_masks_are_unblocked() -> None:
    mask_logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-1.0, -2.0, -0.1, -5.0]])

    blocked = blocked_from_mask_logits(mask_logits)

    assert blocked.tolist() == [[False, True, False, True], [False, False, False, False]]


def test_point_masks_become_superpoint_masks_by_the_weighted_blocked_share() -> None:
    superpoint_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    point_weights = torch.tensor([1.5, 1.0, 1.5, 1.5, 1.5, 0.2])
    mask_logits = torch.tensor(
        [
            # sp0 open; sp1 fully blocked (score 1.5); sp2 half blocked but by the heavy point (score 0.75)
            [1.0, 1.0, -1.0, -1.0, -1.0, 1.0],
            # all points blocked -> the row is unblocked before conversion -> everything open
            [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
            # every superpoint scores > 0.5; the least blocked one (sp0, 0.75) stays open
            [-1.0, 1.0, -1.0, -1.0, -1.0, -1.0],
            # only the light point of sp2 blocked (score 0.1 <= 0.5) -> open
            [1.0, 1.0, 1.0, 1.0, 1.0, -1.0],
        ]
    )

    blocked = superpoint_blocked_from_point_mask(mask_logits, superpoint_ids, point_weights, 3)

    assert blocked.tolist() == [
        [False, True, True],
        [False, False, False],
        [False, True, True],
        [False, False, False],
    ]


def test_cross_attention_ignores_blocked_superpoints() -> None:
    torch.manual_seed(0)
    attention = MaskedCrossAttention(d_model=16, num_heads=2, dropout=0.0)
    queries = torch.randn(2, 16)
    keys = torch.randn(5, 16)
    blocked = torch.tensor([[False, True, True, False, True], [False, False, False, False, False]])
    changed_keys = keys.clone()
    changed_keys[[1, 2, 4]] = torch.randn(3, 16)

    before = attention(queries, keys, blocked)
    after = attention(queries, changed_keys, blocked)

    torch.testing.assert_close(before[0], after[0])
    assert not torch.allclose(before[1], after[1])


def test_decoder_layers_use_the_previous_prediction_as_attention_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    decoder = MixedQueryDecoder(**TINY, num_classes=1, num_semantic_classes=4)
    seen: list[torch.Tensor] = []
    for layer in decoder.layers:
        original = layer.forward

        def recording(queries, keys, blocked, original=original):
            seen.append(blocked)
            return original(queries, keys, blocked)

        monkeypatch.setattr(layer, "forward", recording)
    superpoint_ids = torch.arange(40) % 6
    point_weights = torch.rand(40) * 2.0

    output = decoder(
        torch.randn(6, 8), torch.randn(40, 8), torch.randn(40, 3), superpoint_ids, point_weights, torch.arange(6)
    )

    assert torch.equal(seen[0], blocked_from_mask_logits(output.levels[0].mask_logits))
    assert torch.equal(seen[1], blocked_from_mask_logits(output.levels[1].mask_logits))
    expected = superpoint_blocked_from_point_mask(output.levels[2].mask_logits, superpoint_ids, point_weights, 6)
    assert torch.equal(seen[2], expected)
