"""The typed shape of a bifusion config. Values (and so every default) live in `configs/base.yaml`.

Fields have no defaults on purpose: a key missing from the YAML is an error, so there is exactly one place
where a default is set. Each stage reads the sections it needs and logs them as its resolved config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from bifusion.components.config import apply_overrides, build_dataclass, load_tree, to_tree


@dataclass(frozen=True)
class StorageConfig:
    """Where stage outputs go and how S3 is reached. Credentials never appear here (AWS default chain)."""

    root: str  # file:///abs/path, a plain path (relative to workdir) or s3://bucket/prefix
    endpoint_url: str | None  # S3-compatible endpoint; null -> AWS_ENDPOINT_URL(_S3) or AWS itself
    region: str | None
    addressing_style: Literal["auto", "path", "virtual"]
    part_size_mb: int  # multipart threshold and part size
    max_concurrency: int  # parallel part transfers per file
    max_attempts: int  # bounded retries (botocore "standard" mode: exponential backoff with jitter)
    connect_timeout_s: float
    read_timeout_s: float


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings; uri null -> MLFLOW_TRACKING_URI or sqlite:///<workdir>/mlflow.db."""

    uri: str | None
    experiment: str | None  # null -> MLFLOW_EXPERIMENT_NAME or "bifusion"
    check_timeout_s: float  # a stage fails this fast when the tracking server cannot be reached


@dataclass(frozen=True)
class SynthConfig:
    """Procedural ScanNet-format rooms (`bifusion synth`)."""

    seed: int
    num_scenes: int
    num_val_scenes: int  # the last N scenes form the val split
    frames_per_scene: int  # exported frames, named 0, step, 2*step, ... like ScanNet's 2D export
    export_frame_step: int  # raw frames between two exported frames (ScanNet 2D exports: 20)
    width: int
    height: int
    focal_length_px: float  # at 640x480; scaled with the resolution
    room_size_m: tuple[float, float]  # min and max side length of the rectangular room
    wall_height_m: float
    objects_per_room: tuple[int, int]  # min and max furniture items besides wall/floor decorations
    mesh_vertex_spacing_m: float  # target vertex spacing of the exported mesh
    segment_size_m: float  # size of the mesh over-segmentation patches (segs.json)
    camera_height_m: tuple[float, float]
    jpeg_quality: int
    workers: int


@dataclass(frozen=True)
class SuperpointConfig:
    """How per-frame superpoints are made (`method: felzenszwalb`) or read (`method: masks`)."""

    method: Literal["felzenszwalb", "masks"]
    scale: float  # Felzenszwalb scale: larger -> larger segments
    sigma: float  # Gaussian pre-smoothing of the RGB-D image
    min_size: int  # minimum segment size in pixels (of the subsampled image)
    downsample: int  # segment every n-th pixel in both directions (1 = full resolution)
    normal_weight: float  # weight of surface normals against colour (0-1 range) in edge weights
    plane_offset_weight: float  # weight per metre of difference in tangent-plane offset n.p
    masks_dir: str  # for method=masks: folder under the scene's frame folder with <N>.png / <N>.npy masks


@dataclass(frozen=True)
class PrepConfig:
    """Raw ScanNet layout -> ESAM-compatible single-view (SV), multi-view (MV) and scene sets (`bifusion prep`)."""

    sets: list[Literal["sv", "mv", "scene"]]
    sv_frame_step: int  # raw frames between SV samples (ESAM: 200)
    mv_frame_step: int  # raw frames between MV samples (ESAM: 40)
    points_per_frame: int
    depth_scale: float  # depth PNG units per metre
    depth_range_m: tuple[float, float]
    intrinsics: Literal["file", "scannet_average"]  # per-scene file, or ESAM's fixed 577.87 average
    min_valid_points: int  # frames with fewer valid depth pixels are skipped
    max_bad_fraction: float  # the stage fails if more frames than this fraction are skipped
    label_box_margin_m: float  # points labelled with an instance but outside its box + margin lose the label
    frames_dir: str  # where exported frames live, relative to the raw root; {scene} is replaced
    split_files: dict[str, str]  # split name -> file (relative to the raw root) listing its scenes
    superpoints: SuperpointConfig
    workers: int
    seed: int


@dataclass(frozen=True)
class BackboneConfig:
    """Res16UNet34C (ESAM's values in base.yaml; demo/test profiles shrink the widths)."""

    backend: Literal["torch", "spconv", "minkowski"]
    voxel_size_m: float
    in_channels: int
    planes: tuple[int, int, int, int, int, int, int, int]  # encoder 1-4, decoder 5-8
    layers: tuple[int, int, int, int, int, int, int, int]  # BasicBlocks per stage
    stem_channels: int
    conv1_kernel_size: int
    bn_momentum: float
    block_bn_momentum: float


@dataclass(frozen=True)
class DecoderConfig:
    """ESAM's mixed query decoder over superpoint queries."""

    d_model: int
    num_heads: int
    ffn_channels: int
    num_layers: int
    dropout: float
    min_query_fraction: float  # training draws the query share uniformly in [this, 1]


@dataclass(frozen=True)
class FusionConfig:
    """BiFusion encoder (model/bifusion_encoder.py): widths, the CLIP map size and the occlusion test."""

    channels: int  # fused width = the decoder's input width
    clip_channels: int  # stored CLIP feature channels (ViT-B/16 after proj: 512)
    feature_map_size: tuple[int, int]  # (H', W') the reduced CLIP map is upsampled to before sampling
    head_hidden_channels: int
    dropout: float
    gate_hidden_channels: int
    se_reduction: int
    depth_tolerance_m: float  # |z - depth| <= m + relative * depth for points projected into other frames
    depth_tolerance_relative: float


@dataclass(frozen=True)
class OnlineConfig:
    """Multi-view online model and its losses (model/esam_online.py, model/online_criterion.py; *_mv stages)."""

    memory: bool  # multilevel memory between encoder and decoder (ESAM MV: on)
    memory_box_scale: float  # read-back box = the frame's box enlarged this many times (ESAM 2.5)
    clip_frames: int  # consecutive frames per training clip (ESAM 8)
    merge_hidden_channels: int
    merge_channels: int
    box_loss_weight: float
    merge_loss_weight: float
    merge_temperature: float
    frame_topk: int  # instances kept per frame before online merging (ESAM MV 20)
    frame_score_threshold: float  # ESAM 0.25, ESAM-E 0.3


@dataclass(frozen=True)
class TinySAConfig:
    """TinySA neck on the backbone's per-point features (model/tinysa.py; 3dtsa_* stages)."""

    enabled: bool
    num_heads: int
    num_layers: int
    radius_m: float
    max_neighbours: int
    ffn_channels: int
    center_cell_size_m: float | None  # null: every point is a centre


@dataclass(frozen=True)
class ModelConfig:
    class_agnostic: bool  # one "object" class (ESAM's ScanNet200 setting) or the 198 ScanNet200 thing classes
    backbone: BackboneConfig
    decoder: DecoderConfig
    fusion: FusionConfig  # used by the bifusion_* stages only
    online: OnlineConfig  # used by the *_mv stages only
    tinysa: TinySAConfig


@dataclass(frozen=True)
class AugmentConfig:
    """ESAM's training augmentations; elastic passes are (granularity, magnitude) in voxels."""

    flip_prob: float
    rotation_range_rad: float
    scale_range: tuple[float, float]
    translation_std_m: float
    elastic_prob: float
    elastic_passes: list[tuple[float, float]]


@dataclass(frozen=True)
class LossConfig:
    class_weight: float
    bce_weight: float
    dice_weight: float
    semantic_weight: float
    no_object_weight: float


@dataclass(frozen=True)
class ClipConsistencyLossConfig:
    """CLIP-consistency loss of the bifusion stages (model/clip_consistency.py; presets simple 0.02 / full 0.1)."""

    weight: float  # full weight after the ramp
    start_step: int  # weight 0 before (training starts as stable as the 3D baseline)
    ramp_steps: int  # linear ramp from 0 to weight
    temperature: float
    temperature_floor: float
    learnable_temperature: bool
    clip_grad_ratio: float  # gradient share into the CLIP side (0 = fully detached)
    max_points_per_frame: int


@dataclass(frozen=True)
class FusionTrainConfig:
    """BiFusion-only training knobs."""

    consistency: ClipConsistencyLossConfig
    fixed_alpha: float | None  # gate weight of the 2D feature forced during the first fixed_alpha_steps
    fixed_alpha_steps: int
    gate_statistics_every: int  # iterations between gate statistics in MLflow


@dataclass(frozen=True)
class TrainConfig:
    """One training stage (`bifusion train --stage ...`)."""

    train_split: str
    val_split: str
    epochs: int
    max_iterations: int | None  # stop early (demos, tests); null = epochs x iterations per epoch
    batch_size: int  # frames per step over all processes
    num_workers: int  # DataLoader workers per process
    lr: float
    weight_decay: float
    poly_power: float
    grad_clip_norm: float
    amp: Literal["off", "bf16", "fp16"]  # mixed precision on GPU; ignored on CPU
    device: Literal["auto", "cpu", "cuda"]
    seed: int
    log_every_iterations: int
    checkpoint_every_iterations: int
    validate_every_epochs: int  # 0 = only after the last epoch (ESAM)
    best_metric: str  # evaluation summary key that selects best.pt, e.g. "scannet200/ap50"
    init_checkpoint: str | None  # backbone weights (.pth/.pt URI or path), e.g. Mask3D's ScanNet200 checkpoint
    init_prefix_map: list[tuple[str, str]]  # checkpoint key prefix -> our prefix, tried in order
    augment: AugmentConfig
    loss: LossConfig
    fusion: FusionTrainConfig


@dataclass(frozen=True)
class EvaluateConfig:
    """Inference post-processing and the benchmarks to score (`bifusion evaluate`)."""

    split: str
    benchmarks: list[Literal["scannet200", "scannet20", "scannet200_class_agnostic"]]
    topk: int
    score_threshold: float
    mask_threshold: float
    min_points: int
    export_official: bool  # write the ScanNet benchmark's submission/GT files next to the metrics
    render_frames: int  # frames (SV) or scenes (MV) drawn as GT-vs-prediction pictures in MLflow
    segment_smoothing: bool  # MV (whole-scene) evaluation: vote masks over ScanNet's offline mesh segments (ESAM does)


@dataclass(frozen=True)
class PipelineConfig:
    """Which model routes one pipeline run trains and evaluates (fixed when the pipeline is built)."""

    routes: list[Literal["3d", "tinysa", "bifusion"]]  # 3d: 3d_sv -> 3d_mv; tinysa: 3dtsa_sv -> 3dtsa_mv; bifusion: bifusion_sv -> bifusion_mv
    bifusion_init: Literal["3d", "tinysa"]  # the 3D SV checkpoint bifusion_sv starts from


@dataclass(frozen=True)
class ClipConfig:
    """CLIP image features for BiFusion's 2D branch (`bifusion clip-precompute`, and its online fallback)."""

    model_name: str  # open_clip model config, e.g. ViT-B-16 (OpenAI weights: ViT-B-16-quickgelu)
    weights: str | None  # checkpoint path/URI (full open_clip state dict), "random" (seeded init: demos/tests only); null is an error
    input_size: tuple[int, int]  # (H, W) the tower sees; 240x320 = the whole 4:3 frame as a 15x20 patch grid
    batch_size: int  # images per forward pass
    workers: int  # threads that read/decode images and write feature files
    device: Literal["auto", "cpu", "cuda"]
    feature_root: str  # folder under storage.root; features land in <feature_root>/<fingerprint>
    write_infos: bool  # also write copies of the info files with the feature paths added
    validate_samples: int  # stored features recomputed online and compared after the run
    max_l2_tolerance: float  # the stage fails when a recomputed patch feature differs by more (L2)


@dataclass(frozen=True)
class Config:
    """A whole bifusion config: shared sections plus one section per stage."""

    workdir: str  # local working folder: default store, MLflow database, caches
    storage: StorageConfig
    tracking: TrackingConfig
    synth: SynthConfig
    prep: PrepConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    pipeline: PipelineConfig
    clip: ClipConfig


def config_to_json(config: Config) -> str:
    """One-line JSON of a resolved config: how pipeline tasks receive it.

    JSON rather than YAML: KFP copies parameter defaults into a comment header of the compiled file, and a
    multi-line default breaks that file's YAML.
    """
    return json.dumps(to_tree(config))


def config_from_json(text: str) -> Config:
    """Rebuild a resolved config from `config_to_json`'s output."""
    return build_dataclass(Config, json.loads(text))


def load_config(refs: Sequence[str | Path] = ("base",), overrides: Sequence[str] = ()) -> Config:
    """Merge config files left to right (each with its `_base_` chain), apply overrides, build the schema."""
    tree = load_tree(list(refs) or ["base"])
    return build_dataclass(Config, apply_overrides(tree, overrides))
