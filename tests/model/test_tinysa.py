"""TinySA: ball query against brute force, grid subsampling, upsampling, forward shapes and gradient flow."""

from __future__ import annotations

import pytest
import torch

from bifusion.model.tinysa import (
    BallNeighborhoods,
    NeighborhoodAttentionLayer,
    TinySANeck,
    ball_query,
    grid_subsample,
    is_positional_embedding_parameter,
)


def brute_force_ball_query(centers: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """In float64: points with distance < radius, sorted by (distance, index), first k, -1 padded."""
    distances = torch.cdist(centers.double(), points.double())
    distances = torch.where(distances < radius, distances, torch.inf)
    ordered = distances.sort(dim=1, stable=True)
    padded = torch.full((centers.shape[0], k), -1, dtype=torch.long)
    width = min(k, points.shape[0])
    padded[:, :width] = torch.where(ordered.values[:, :width].isfinite(), ordered.indices[:, :width], -1)
    return padded


def clustered_points(seed: int = 0) -> torch.Tensor:
    """1,500 points in a 2 m cube, a dense 5 cm cluster of 80 (more than 32 in any ball there) and an isolated
    point (index 7) with no neighbour but itself."""
    generator = torch.Generator().manual_seed(seed)
    points = 2.0 * torch.rand(1500, 3, generator=generator)
    points[100:180] = torch.tensor([1.0, 1.0, 1.0]) + 0.05 * torch.rand(80, 3, generator=generator)
    points[7] = torch.tensor([6.0, 6.0, 6.0])
    return points


@pytest.mark.parametrize("chunk_pairs", [1 << 22, 3000], ids=["one-chunk", "many-chunks"])
def test_ball_query_matches_brute_force(chunk_pairs: int) -> None:
    points = clustered_points()
    centers = torch.cat([points[torch.arange(0, 1500, 5)], points[[7, 120]]])  # last two: isolated, in the cluster
    result = ball_query(centers, points, radius=0.3, max_neighbors=32, chunk_pairs=chunk_pairs)
    expected = brute_force_ball_query(centers, points, 0.3, 32)
    assert torch.equal(result.indices, expected)
    counts = result.counts
    full = (torch.cdist(centers.double(), points.double()) < 0.3).sum(dim=1)
    assert torch.equal(counts, full.clamp_max(32))
    assert counts[-2].item() == 1 and result.indices[-2, 0].item() == 7  # isolated: only itself
    assert counts[-1].item() == 32 and full[-1].item() > 32  # in the cluster: capped at the 32 nearest
    assert (full > 32).sum() > 10 and ((full > 1) & (full < 32)).sum() > 10


def test_ball_query_for_centres_off_the_point_set() -> None:
    points = clustered_points()
    centers = torch.tensor([[50.0, 50.0, 50.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    result = ball_query(centers, points, radius=0.3, max_neighbors=32)
    assert torch.equal(result.indices, brute_force_ball_query(centers, points, 0.3, 32))
    assert result.counts[0].item() == 0 and not result.valid[0].any()


def test_ball_query_breaks_distance_ties_by_lower_index() -> None:
    points = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    result = ball_query(torch.zeros(1, 3), points, radius=1.5, max_neighbors=3)
    assert result.indices.tolist() == [[3, 0, 1]]  # 0.5 first, then the lowest indices among the four at 1.0


def test_ball_query_with_more_slots_than_points() -> None:
    points = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    result = ball_query(points, points, radius=0.3, max_neighbors=4)
    assert result.indices.tolist() == [[0, 1, -1, -1], [1, 0, -1, -1]]
    assert isinstance(result, BallNeighborhoods)


def test_grid_subsample_keeps_the_point_nearest_each_cell_centre() -> None:
    points = torch.tensor(
        [
            [0.01, 0.01, 0.01],  # cell (0, 0, 0), far from its centre
            [0.05, 0.04, 0.06],  # cell (0, 0, 0), nearest the centre (0.05, 0.05, 0.05)
            [0.15, 0.05, 0.05],  # cell (1, 0, 0), alone
            [0.05, 0.05, 0.05 + 0.1],  # cell (0, 0, 1), exactly at its centre
            [0.05, 0.05, 0.05 + 0.1],  # duplicate: the lower index wins
        ]
    )
    assert grid_subsample(points, cell_size=0.1).tolist() == [1, 2, 3]


def test_grid_subsample_does_not_depend_on_point_order() -> None:
    points = clustered_points()
    chosen = grid_subsample(points, 0.2)
    permutation = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(1))
    chosen_permuted = permutation[grid_subsample(points[permutation], 0.2)]
    assert torch.equal(chosen_permuted.sort().values, chosen)
    cells = torch.floor(points / 0.2).long()
    assert chosen.numel() == torch.unique(cells, dim=0).shape[0]


def randomise_output_layers(neck: TinySANeck) -> None:
    """The neck starts as the identity (zero output layers); give them weights so every parameter matters."""
    generator = torch.Generator().manual_seed(3)
    for layer in neck.layers:
        for linear in (layer.attention_out, layer.ffn[-1]):
            with torch.no_grad():
                linear.weight.copy_(0.1 * torch.randn(linear.weight.shape, generator=generator))
                linear.bias.copy_(0.1 * torch.randn(linear.bias.shape, generator=generator))


def test_new_neck_is_the_identity() -> None:
    points = clustered_points()
    features = torch.randn(points.shape[0], 16)
    neck = TinySANeck(channels=16, num_heads=4, num_layers=2, ffn_channels=32, center_cell_size=0.2)
    torch.testing.assert_close(neck(points, features), features)


def test_forward_shapes_and_gradient_flow() -> None:
    torch.manual_seed(0)
    points = clustered_points()
    features = torch.randn(points.shape[0], 16, requires_grad=True)
    neck = TinySANeck(channels=16, num_heads=4, num_layers=2, ffn_channels=32, center_cell_size=0.2)
    randomise_output_layers(neck)
    out = neck(points, features)
    assert out.shape == features.shape
    assert not torch.allclose(out, features)
    out.square().mean().backward()
    assert torch.isfinite(features.grad).all()
    for name, parameter in neck.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_every_point_gets_the_update_of_its_nearest_centre() -> None:
    torch.manual_seed(0)
    points = clustered_points()
    features = torch.randn(points.shape[0], 16)
    neck = TinySANeck(channels=16, num_heads=4, num_layers=1, ffn_channels=32, center_cell_size=0.25)
    randomise_output_layers(neck)
    centers = grid_subsample(points, 0.25)
    neighbors = ball_query(points[centers], points, 0.3, 32).indices
    updates = neck.layers[0](features, points, centers, neighbors)
    nearest = torch.cdist(points.double(), points[centers].double()).argmin(dim=1)
    torch.testing.assert_close(neck(points, features), features + updates[nearest])
    assert 0 < centers.numel() < points.shape[0]


def test_without_subsampling_every_point_is_its_own_centre() -> None:
    torch.manual_seed(0)
    points = clustered_points()[:300]
    features = torch.randn(300, 8)
    neck = TinySANeck(channels=8, num_heads=2, num_layers=1, ffn_channels=16, center_cell_size=None)
    randomise_output_layers(neck)
    everything = torch.arange(300)
    neighbors = ball_query(points, points, 0.3, 32).indices
    torch.testing.assert_close(
        neck(points, features), features + neck.layers[0](features, points, everything, neighbors)
    )


def test_padding_slots_do_not_change_the_attention() -> None:
    torch.manual_seed(0)
    points = clustered_points()
    features = torch.randn(points.shape[0], 8)
    layer = NeighborhoodAttentionLayer(channels=8, num_heads=2, ffn_channels=16, radius=0.3)
    for linear in (layer.attention_out, layer.ffn[-1]):
        torch.nn.init.normal_(linear.weight, std=0.1)
    centers = torch.tensor([0, 7, 120])
    narrow = ball_query(points[centers], points, 0.3, 32).indices
    wide = ball_query(points[centers], points, 0.3, 64).indices
    assert (wide == -1).any()
    padded = torch.cat([narrow, torch.full((3, 8), -1)], dim=1)
    torch.testing.assert_close(layer(features, points, centers, narrow), layer(features, points, centers, padded))
    far = torch.tensor([[100.0, 100.0, 100.0]])
    lonely = layer(
        torch.cat([features, torch.randn(1, 8)]),
        torch.cat([points, far]),
        torch.tensor([1500]),
        torch.full((1, 32), -1),
    )
    assert torch.isfinite(lonely).all()


def test_positional_embedding_parameters_are_identifiable() -> None:
    neck = TinySANeck(channels=8, num_heads=2, num_layers=2, ffn_channels=16)
    names = neck.no_weight_decay_parameter_names()
    assert names == {
        f"layers.{layer}.pos_embed.{index}.{kind}"
        for layer in (0, 1)
        for index in (0, 2)
        for kind in ("weight", "bias")
    }
    wrapped = torch.nn.ModuleDict({"neck": neck, "head": torch.nn.Linear(2, 2)})
    found = {name for name, _ in wrapped.named_parameters() if is_positional_embedding_parameter(name)}
    assert found == {f"neck.{name}" for name in names}
    assert not is_positional_embedding_parameter("decoder.pos_embedding_scale")


def test_empty_frame() -> None:
    neck = TinySANeck(channels=8, num_heads=2, num_layers=1, ffn_channels=16)
    assert neck(torch.zeros(0, 3), torch.zeros(0, 8)).shape == (0, 8)
