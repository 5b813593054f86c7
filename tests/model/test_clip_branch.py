"""The CLIP 2D branch: weight loading, preprocessing, which tokens make the map, freezing, stored == online."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import resize_pos_embed

from bifusion.model.bifusion_encoder import BiFusionEncoder
from bifusion.model.clip_branch import (
    CLIP_INPUT_SIZE,
    ClipFeatureReducer,
    ClipImageEncoder,
    clip_image_features,
    load_clip_visual,
    patch_token_map,
    preprocess_images,
)

TINY_MODEL = "bifusion-test-tiny-vit"
TINY_INPUT = (24, 32)  # (H, W): a 3x4 grid of 8 px patches, 4:3 like the real 240x320 input
TINY_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_model_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Register a 3-layer, 32-wide ViT with open_clip so the real create_model/load_checkpoint path builds it."""
    path = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY_MODEL}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)


@pytest.fixture(autouse=True)
def single_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tiny towers: with several threads, synchronisation costs 100x the arithmetic on a busy 2-core CPU."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_images(count: int, height: int = 48, width: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, height, width, 3), dtype=torch.uint8, generator=generator)


def save_random_clip(tmp_path: Path, model_name: str, image_size: int | tuple[int, int]) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, force_image_size=image_size)
    path = tmp_path / f"{model_name}.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.slow
def test_real_vit_b16_loads_from_a_weights_file_with_identical_features(tmp_path: Path) -> None:
    source, path = save_random_clip(tmp_path, "ViT-B-16", CLIP_INPUT_SIZE)
    loaded = load_clip_visual("ViT-B-16", str(path))
    image = random_images(1, 480, 640)[0].numpy()

    expected = clip_image_features(source.visual.eval(), image)
    features = clip_image_features(loaded, image)

    assert loaded.grid_size == (15, 20)
    assert features.shape == (1, 512, 15, 20) and features.dtype == torch.float16
    assert torch.equal(features, expected)


def test_a_224_checkpoint_gets_its_positional_embedding_resized_by_open_clip(tmp_path: Path) -> None:
    source, path = save_random_clip(tmp_path, TINY_MODEL, 32)

    loaded = load_clip_visual(TINY_MODEL, str(path), input_size=TINY_INPUT)

    expected = {"visual.positional_embedding": source.visual.positional_embedding.detach().clone()}
    resize_pos_embed(expected, SimpleNamespace(visual=loaded))
    assert source.visual.positional_embedding.shape == (1 + 4 * 4, 32)
    assert loaded.positional_embedding.shape == (1 + 3 * 4, 32)
    torch.testing.assert_close(loaded.positional_embedding, expected["visual.positional_embedding"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.positional_embedding[0], source.visual.positional_embedding[0], rtol=0, atol=0)
    torch.testing.assert_close(loaded.conv1.weight, source.visual.conv1.weight, rtol=0, atol=0)


def test_preprocessing_resizes_the_whole_image_and_applies_clip_mean_std() -> None:
    visual = load_clip_visual(TINY_MODEL, input_size=TINY_INPUT)
    colour = torch.tensor([10, 128, 250], dtype=torch.uint8)
    image = colour.expand(48, 64, 3).contiguous()

    pixels = preprocess_images(image, visual)

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)
    expected = ((colour.float() / 255 - mean) / std).view(1, 3, 1, 1).expand(1, 3, *TINY_INPUT)
    torch.testing.assert_close(pixels, expected)
    images = random_images(2)
    torch.testing.assert_close(preprocess_images(images.numpy(), visual), preprocess_images(images, visual), rtol=0, atol=0)
    torch.testing.assert_close(preprocess_images(images[1], visual), preprocess_images(images, visual)[1:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(images.float(), visual)


def test_features_are_the_final_patch_tokens_after_ln_post_and_the_clip_projection() -> None:
    visual = load_clip_visual(TINY_MODEL, input_size=TINY_INPUT)
    pixels = preprocess_images(random_images(2), visual)

    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(pixels)  # open_clip's own forward: ln_post applied, class token dropped, no proj
    visual.output_tokens = False
    expected = (tokens @ visual.proj).reshape(2, 3, 4, 24).permute(0, 3, 1, 2)

    with torch.no_grad():
        torch.testing.assert_close(patch_token_map(visual, pixels), expected)


def test_stored_features_are_deterministic_and_need_eval_mode() -> None:
    visual = load_clip_visual(TINY_MODEL, input_size=TINY_INPUT)
    images = random_images(2)

    assert torch.equal(clip_image_features(visual, images), clip_image_features(visual, images))
    visual.transformer.resblocks[0].train()
    with pytest.raises(ValueError, match="eval mode"):
        clip_image_features(visual, images)


def test_tower_is_frozen_by_default() -> None:
    encoder = ClipImageEncoder(load_clip_visual(TINY_MODEL, input_size=TINY_INPUT)).train()

    features = encoder(random_images(1))

    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any(m.training for m in encoder.visual.modules())
    assert features.grad_fn is None
    assert encoder.parameter_groups(lr=1e-5) == []


def test_unfrozen_last_blocks_get_gradients_and_their_own_parameter_group() -> None:
    visual = load_clip_visual(TINY_MODEL, input_size=TINY_INPUT)
    encoder = ClipImageEncoder(visual, unfrozen_blocks=1).train()

    encoder(random_images(2)).square().sum().backward()

    last_block, frozen_blocks = visual.transformer.resblocks[-1], visual.transformer.resblocks[:-1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_block.parameters())
    assert visual.proj.grad is not None and visual.ln_post.weight.grad is not None
    assert all(p.grad is None for block in frozen_blocks for p in block.parameters())
    assert visual.conv1.weight.grad is None and visual.positional_embedding.grad is None
    assert last_block.training and not any(block.training for block in frozen_blocks) and not visual.training
    (group,) = encoder.parameter_groups(lr=1e-5)
    expected = {id(p) for p in [*last_block.parameters(), *visual.ln_post.parameters(), visual.proj]}
    assert group["lr"] == 1e-5 and {id(p) for p in group["params"]} == expected
    with pytest.raises(ValueError, match="unfrozen_blocks"):
        ClipImageEncoder(visual, unfrozen_blocks=4)


@pytest.mark.parametrize("unfrozen_blocks", [0, 2])
def test_precomputed_features_give_the_online_feature_map(unfrozen_blocks: int) -> None:
    torch.manual_seed(0)
    visual = load_clip_visual(TINY_MODEL, input_size=TINY_INPUT)
    fusion = BiFusionEncoder(point_channels=8, clip_channels=24, channels=32, feature_map_size=(6, 8))
    images = random_images(2)

    stored = clip_image_features(visual, images)
    online = ClipImageEncoder(visual, unfrozen_blocks=unfrozen_blocks).train()(images)
    stored_map, online_map = fusion.feature_maps(stored), fusion.feature_maps(online)

    assert stored.dtype == torch.float16 and online.dtype == torch.float32
    assert (stored_map - online_map).norm(dim=1).max() < 1e-3
    if unfrozen_blocks == 0:
        assert torch.equal(online, stored.float()) and torch.equal(online_map, stored_map)


def test_reducer_maps_stored_float16_features_to_float32() -> None:
    torch.manual_seed(0)
    reducer = ClipFeatureReducer(clip_channels=24, out_channels=32)
    features = torch.randn(2, 24, 3, 4).half()

    reduced = reducer(features)

    assert reduced.dtype == torch.float32 and reduced.shape == (2, 32, 3, 4)
    weight, bias = reducer.reduce.weight[:, :, 0, 0], reducer.reduce.bias
    expected = torch.einsum("oc,bchw->bohw", weight, features.float()) + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(reduced, expected)
    with pytest.raises(ValueError, match="clip_features"):
        reducer(torch.randn(2, 16, 3, 4))


def test_image_array_and_tensor_inputs_agree() -> None:
    visual = load_clip_visual(TINY_MODEL, input_size=TINY_INPUT)
    image = random_images(1)[0]

    assert torch.equal(clip_image_features(visual, np.ascontiguousarray(image.numpy())), clip_image_features(visual, image))
