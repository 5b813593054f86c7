"""Multilevel memory: identity at initialisation, max-pooled accumulation, reset, read-back box, coordinates
not rows (row order and sparse backend do not change the result), exact dilation-3 conv."""

from __future__ import annotations

import pytest
import torch

from bifusion.model.multilevel_memory import MultilevelMemory, dilated_lattice, inside_enlarged_boxes
from bifusion.model.sparse import SparseBackend, SparseTensor, available_backends, lookup_rows
from bifusion.model.sparse.layers import SubmanifoldConv3d

STRIDES = (2, 4)
CHANNELS = (4, 6)


def level_tensor(cells: torch.Tensor, stride: int, channels: int, seed: int, batch: int = 0) -> SparseTensor:
    """Distinct grid cells (M, 3) -> a post-ReLU level tensor at `stride` with seeded features."""
    generator = torch.Generator().manual_seed(seed)
    coordinates = torch.cat([torch.full((len(cells), 1), batch), cells * stride], dim=1).to(torch.int32)
    return SparseTensor(coordinates, torch.rand(len(cells), channels, generator=generator), tensor_stride=stride)


def random_cells(count: int, extent: int, seed: int, offset: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, extent, (count * 3, 3), generator=generator).unique(dim=0)
    return cells[torch.randperm(len(cells), generator=generator)[:count]] + offset


def frame_levels(seed: int, offset: int = 0) -> list[SparseTensor]:
    return [level_tensor(random_cells(40, 6, seed + i, offset), s, c, seed + 10 + i)
            for i, (s, c) in enumerate(zip(STRIDES, CHANNELS))]


def activated_memory(backend: SparseBackend) -> MultilevelMemory:
    """A memory whose context is not zero (the zero-initialised BN scale and shift set to 1 and 0.1), eval mode."""
    torch.manual_seed(0)
    memory = MultilevelMemory(CHANNELS, backend).eval()
    for level in memory.levels:
        torch.nn.init.ones_(level.reduce[1].bn.weight)
        torch.nn.init.constant_(level.reduce[1].bn.bias, 0.1)
    return memory


def permuted(tensor: SparseTensor, seed: int) -> SparseTensor:
    order = torch.randperm(tensor.num_voxels, generator=torch.Generator().manual_seed(seed))
    return SparseTensor(tensor.coordinates[order].clone(), tensor.features[order], tensor.tensor_stride)


def test_new_memory_is_the_identity_on_every_frame() -> None:
    memory = MultilevelMemory(CHANNELS, SparseBackend.TORCH).train()
    for seed in (0, 1, 2):
        levels = frame_levels(seed)
        outputs = memory(levels)
        for level, output in zip(levels, outputs):
            assert output.coordinates is level.coordinates
            torch.testing.assert_close(output.features, level.features, rtol=0, atol=0)


def test_context_depends_on_earlier_frames_and_reset_forgets_them() -> None:
    memory = activated_memory(SparseBackend.TORCH)
    first, second = frame_levels(0), frame_levels(100)
    alone = [o.features for o in memory(second)]
    memory.reset()
    assert memory.num_stored_voxels == [0, 0]
    memory(first)
    after_first = [o.features for o in memory(second)]
    assert any(not torch.allclose(a, b) for a, b in zip(alone, after_first))
    memory.reset()
    again = [o.features for o in memory(second)]
    for a, b in zip(alone, again):
        torch.testing.assert_close(a, b)


def test_accumulation_is_the_max_over_frames_by_coordinate() -> None:
    memory = MultilevelMemory(CHANNELS, SparseBackend.TORCH)
    first, second = frame_levels(0), frame_levels(5)
    memory(first)
    memory(second)
    state = memory._states[0]
    expected = {}
    for tensor in (first[0], second[0]):
        for coordinate, feature in zip(tensor.coordinates.tolist(), tensor.features):
            key = tuple(coordinate)
            expected[key] = feature if key not in expected else torch.maximum(expected[key], feature)
    assert state.coordinates.shape[0] == len(expected)
    for coordinate, feature in zip(state.coordinates.tolist(), state.features):
        torch.testing.assert_close(feature, expected[tuple(coordinate)])


def test_read_back_box_is_the_frame_box_enlarged_about_its_centre() -> None:
    frame = torch.tensor([[0, 0, 0, 0], [0, 4, 2, 2]], dtype=torch.int32)  # centre (2, 1, 1), half-size (2, 1, 1)
    stored = torch.tensor([[0, 7, 1, 1], [0, 8, 1, 1], [0, -3, 1, 1], [0, 2, 3, 1], [1, 2, 1, 1]], dtype=torch.int32)
    # scale 2.5: x in [-3, 7], y and z in [-1.5, 3.5]; batch 1 has no frame voxels
    assert inside_enlarged_boxes(stored, frame, 2.5).tolist() == [True, False, True, True, False]


@pytest.mark.parametrize("backend", available_backends())
def test_output_depends_on_coordinates_not_row_order(backend: SparseBackend) -> None:
    frames = [frame_levels(0), frame_levels(7, offset=2)]
    reference = activated_memory(SparseBackend.TORCH)
    expected = [reference(levels) for levels in frames][-1]
    memory = activated_memory(backend)
    memory.load_state_dict(reference.state_dict())
    outputs = [memory([permuted(t, 3 + i) for t in levels]) for i, levels in enumerate(frames)][-1]
    for want, got in zip(expected, outputs):
        rows = lookup_rows(got, want.coordinates)
        assert bool((rows >= 0).all())
        torch.testing.assert_close(got.features[rows], want.features, rtol=1e-5, atol=1e-5)


def test_dilated_lattice_conv_equals_a_dilation_3_conv() -> None:
    torch.manual_seed(0)
    cells = random_cells(60, 9, seed=1)
    coordinates = torch.cat([torch.zeros(len(cells), 1, dtype=torch.long), cells], dim=1).to(torch.int32)
    features = torch.randn(len(cells), 3)
    conv = SubmanifoldConv3d(3, 2, 3, SparseBackend.TORCH)
    got = conv(dilated_lattice(SparseTensor(coordinates, features), 3)).features
    offsets = [(dx, dy, dz) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # ME order, x fastest
    index = {tuple(c): i for i, c in enumerate(cells.tolist())}
    expected = torch.zeros(len(cells), 2)
    for row, cell in enumerate(cells.tolist()):
        for k, (dx, dy, dz) in enumerate(offsets):
            neighbour = index.get((cell[0] + 3 * dx, cell[1] + 3 * dy, cell[2] + 3 * dz))
            if neighbour is not None:
                expected[row] += features[neighbour] @ conv.kernel[k]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
