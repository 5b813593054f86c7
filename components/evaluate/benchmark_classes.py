"""Label spaces of the ScanNet benchmarks, keyed by the raw ScanNet ids our data stores per point.

A raw id is the `id` column of `scannetv2-labels.combined.tsv` (0 = unannotated); ScanNet200 classes are raw
ids, ScanNet20 classes are nyu40 ids reached through the tsv's `nyu40id` column.

Class orders (index = position in `class_ids`):

- ScanNet200 semantic (`scannet200_semantic_space`): ESAM's contiguous order, index 200 = ignore. ESAM's
  `SwapChairAndFloor` swaps raw ids 2 (chair) and 3 (floor) before mapping `VALID_CLASS_IDS_200` to indices,
  so index 0 = wall (1), 1 = floor (3), 2 = chair (2) and index i >= 3 = `VALID_CLASS_IDS_200[i]`
  (the official list order). The two stuff classes come first; indices 2..199 are the 198 thing classes.
- ScanNet200 instance (`scannet200_instance_benchmark`): the 198 thing classes in the same order, i.e.
  ESAM's `inst_mapping = sem_mapping[2:]`: instance index t = semantic index t + 2.
- ScanNet20 semantic: the official `evaluate_semantic_label.py` order (wall, floor, cabinet, ... nyu40 ids).
- ScanNet20 instance: the 18 classes of the official `evaluate_semantic_instance.py` (nyu40 ids 3 ... 39).
- Class-agnostic instance: one class "object" (label id 1) made of every ScanNet200 thing class.

Instance benchmarks call GT points "void" when their class is not one of the benchmark's classes (stuff,
unlabeled, classes outside the list); void points are never GT instances but still matter for false positives.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from bifusion.components.labels import label_table

# Wall and floor: the ScanNet200 stuff classes, learned only by the semantic head and void for instance AP.
SCANNET200_STUFF_RAW_IDS = (1, 3)
SCANNET200_IGNORE_INDEX = 200
CLASS_AGNOSTIC_LABEL_ID = 1
CLASS_AGNOSTIC_NAME = "object"
VOID = -1


def _index_table(class_ids: tuple[int, ...], size: int, fill: int) -> np.ndarray:
    table = np.full(size, fill, dtype=np.int64)
    table[list(class_ids)] = np.arange(len(class_ids))
    table.setflags(write=False)
    return table


def _lookup(table: np.ndarray, ids: np.ndarray, fill: int) -> np.ndarray:
    """table[ids] where ids lie inside the table, `fill` elsewhere."""
    ids = np.asarray(ids, dtype=np.int64)
    inside = (ids >= 0) & (ids < len(table))
    return np.where(inside, table[np.where(inside, ids, 0)], fill)


def _raw_lookup(table: np.ndarray, raw_ids: np.ndarray) -> np.ndarray:
    raw_ids = np.asarray(raw_ids)
    if not np.issubdtype(raw_ids.dtype, np.integer):
        raise TypeError(f"raw ScanNet ids must be integers, got dtype {raw_ids.dtype}")
    if raw_ids.size and (raw_ids.min() < 0 or raw_ids.max() >= len(table)):
        raise ValueError(
            f"raw ScanNet ids must lie in [0, {len(table) - 1}] (the tsv `id` column), "
            f"got values in [{raw_ids.min()}, {raw_ids.max()}]"
        )
    return table[raw_ids]


@dataclass(frozen=True, eq=False)
class InstanceBenchmark:
    """One instance-segmentation benchmark: its classes and how raw ids and predicted labels map onto them.

    class_ids are the benchmark's label ids (what a submission file writes): ScanNet200 raw ids, nyu40 ids, or
    `CLASS_AGNOSTIC_LABEL_ID`. raw_to_index (max_raw_id + 1,) maps a raw id to a class index or VOID.
    """

    name: str
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    class_splits: tuple[str, ...] | None  # "head" | "common" | "tail" per class (ScanNet200 only)
    class_agnostic: bool
    raw_to_index: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def gt_class_index(self, raw_semantic_ids: np.ndarray) -> np.ndarray:
        """Class index `(N,)` of each GT point from its raw ScanNet id; VOID for stuff / unlabeled / other."""
        return _raw_lookup(self.raw_to_index, raw_semantic_ids)

    def index_of_class_id(self, class_ids: np.ndarray) -> np.ndarray:
        """Class index of benchmark label ids; VOID for ids that are not classes of this benchmark."""
        table = _index_table(self.class_ids, max(self.class_ids) + 1, VOID)
        return _lookup(table, class_ids, VOID)

    def class_id_of_index(self, indices: np.ndarray) -> np.ndarray:
        """Benchmark label ids of class indices (e.g. a model's contiguous instance classes), for export."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_classes):
            raise ValueError(
                f"{self.name}: class indices must lie in [0, {self.num_classes - 1}], got {indices.min()}..{indices.max()}"
            )
        return np.asarray(self.class_ids, dtype=np.int64)[indices]

    def pred_class_index(self, pred_class_ids: np.ndarray | None, num_predictions: int) -> np.ndarray:
        """Class index `(K,)` of predictions given their label ids; VOID drops a prediction (official script).

        Class-agnostic benchmarks disregard predicted labels (`pred_class_ids` may be None): every prediction
        is an "object". Class-aware benchmarks need them.
        """
        if self.class_agnostic:
            return np.zeros(num_predictions, dtype=np.int64)
        if pred_class_ids is None:
            raise ValueError(f"{self.name} is class-aware: pred_class_ids (K,) benchmark label ids are required")
        pred_class_ids = np.asarray(pred_class_ids)
        if pred_class_ids.shape != (num_predictions,):
            raise ValueError(f"pred_class_ids must have shape ({num_predictions},), got {pred_class_ids.shape}")
        return self.index_of_class_id(pred_class_ids)


@dataclass(frozen=True, eq=False)
class SemanticLabelSpace:
    """Contiguous semantic classes 0..C-1 plus `ignore_index` = C for every raw id outside the class list."""

    name: str
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    class_splits: tuple[str, ...] | None
    raw_to_index: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def ignore_index(self) -> int:
        return len(self.class_ids)

    def index_of_raw(self, raw_semantic_ids: np.ndarray) -> np.ndarray:
        """Contiguous class index `(N,)` of raw ScanNet ids; `ignore_index` for unlabeled / non-benchmark ids."""
        return _raw_lookup(self.raw_to_index, raw_semantic_ids)

    def index_of_class_id(self, class_ids: np.ndarray) -> np.ndarray:
        """Contiguous index of benchmark label ids (ScanNet200 raw / nyu40 ids); `ignore_index` for others."""
        table = _index_table(self.class_ids, max(self.class_ids) + 1, self.ignore_index)
        return _lookup(table, class_ids, self.ignore_index)

    def class_id_of_index(self, indices: np.ndarray) -> np.ndarray:
        """Benchmark label ids of contiguous indices; `ignore_index` maps to 0 (unannotated)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() > self.ignore_index):
            raise ValueError(f"{self.name}: indices must lie in [0, {self.ignore_index}], got {indices.min()}..{indices.max()}")
        return np.append(np.asarray(self.class_ids, dtype=np.int64), 0)[indices]


@functools.lru_cache(maxsize=1)
def _tsv_rows() -> tuple[dict[str, str], ...]:
    with (resources.files("bifusion.components.data") / "scannetv2-labels.combined.tsv").open() as handle:
        return tuple(csv.DictReader(handle, delimiter="\t"))


@functools.lru_cache(maxsize=1)
def raw_to_nyu40_table() -> np.ndarray:
    """(max_raw_id + 1,) nyu40 id of every raw ScanNet id (0 for ids the tsv does not list).

    The tsv maps raw *categories*; three raw ids are shared by categories with different nyu40 ids
    (107 pipe/pipes: 40/38, 188 shower door/doors: 8/38, 385 cabinet door/doors: 8/3). Our data keeps only the
    raw id, so the row whose `raw_category` equals its `category` (the canonical spelling) decides. The official
    ScanNet20 GT, built from raw categories, differs on the vertices of the other spellings.
    """
    by_id: dict[int, list[dict[str, str]]] = {}
    for row in _tsv_rows():
        by_id.setdefault(int(row["id"]), []).append(row)
    table = np.zeros(max(by_id) + 1, dtype=np.int64)
    for raw_id, rows in by_id.items():
        nyu40 = {int(row["nyu40id"] or 0) for row in rows}
        if len(nyu40) > 1:
            canonical = [row for row in rows if row["raw_category"] == row["category"]]
            if len(canonical) != 1:
                raise ValueError(
                    f"scannetv2-labels.combined.tsv: raw id {raw_id} has nyu40 ids {sorted(nyu40)} and "
                    f"{len(canonical)} rows whose raw_category equals category (expected exactly 1)"
                )
            nyu40 = {int(canonical[0]["nyu40id"])}
        table[raw_id] = nyu40.pop()
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=1)
def _classes_json() -> dict:
    return json.loads((resources.files("bifusion.components.data") / "scannet_classes.json").read_text())


def _raw_table_size() -> int:
    return len(raw_to_nyu40_table())


@functools.lru_cache(maxsize=1)
def scannet200_esam_class_ids() -> tuple[int, ...]:
    """The 200 ScanNet200 raw ids in ESAM's contiguous order (official order with chair and floor swapped)."""
    ids = list(label_table().scannet200_ids)
    chair, floor = ids.index(2), ids.index(3)
    ids[chair], ids[floor] = ids[floor], ids[chair]
    return tuple(ids)


@functools.lru_cache(maxsize=1)
def scannet200_semantic_space() -> SemanticLabelSpace:
    labels = label_table()
    name_of = dict(zip(labels.scannet200_ids, labels.scannet200_names))
    class_ids = scannet200_esam_class_ids()
    names = tuple(name_of[i] for i in class_ids)
    return SemanticLabelSpace(
        name="scannet200",
        class_ids=class_ids,
        class_names=names,
        class_splits=tuple(labels.split_of_name[n] for n in names),
        raw_to_index=_index_table(class_ids, _raw_table_size(), SCANNET200_IGNORE_INDEX),
    )


@functools.lru_cache(maxsize=1)
def scannet20_semantic_space() -> SemanticLabelSpace:
    labels = label_table()
    nyu40_to_index = _index_table(labels.scannet20_ids, max(labels.scannet20_ids) + 1, len(labels.scannet20_ids))
    raw_to_index = _lookup(nyu40_to_index, raw_to_nyu40_table(), len(labels.scannet20_ids))
    raw_to_index.setflags(write=False)
    return SemanticLabelSpace(
        name="scannet20",
        class_ids=labels.scannet20_ids,
        class_names=labels.scannet20_names,
        class_splits=None,
        raw_to_index=raw_to_index,
    )


def scannet200_raw_to_index(raw_ids: np.ndarray) -> np.ndarray:
    """Raw ScanNet ids -> ESAM contiguous ScanNet200 semantic index (0 wall, 1 floor, 2 chair, ...; 200 ignore)."""
    return scannet200_semantic_space().index_of_raw(raw_ids)


def scannet200_index_to_raw(indices: np.ndarray) -> np.ndarray:
    """ESAM contiguous ScanNet200 semantic index -> raw ScanNet id (200 = ignore -> 0 = unannotated)."""
    return scannet200_semantic_space().class_id_of_index(indices)


@functools.lru_cache(maxsize=1)
def scannet200_instance_benchmark() -> InstanceBenchmark:
    semantic = scannet200_semantic_space()
    things = [i for i, class_id in enumerate(semantic.class_ids) if class_id not in SCANNET200_STUFF_RAW_IDS]
    class_ids = tuple(semantic.class_ids[i] for i in things)
    return InstanceBenchmark(
        name="scannet200",
        class_ids=class_ids,
        class_names=tuple(semantic.class_names[i] for i in things),
        class_splits=tuple(semantic.class_splits[i] for i in things),
        class_agnostic=False,
        raw_to_index=_index_table(class_ids, _raw_table_size(), VOID),
    )


@functools.lru_cache(maxsize=1)
def scannet20_instance_benchmark() -> InstanceBenchmark:
    classes = _classes_json()["instance_eval_scannet20"]
    class_ids = tuple(classes["valid_class_ids"])
    nyu40_to_index = _index_table(class_ids, max(class_ids) + 1, VOID)
    raw_to_index = _lookup(nyu40_to_index, raw_to_nyu40_table(), VOID)
    raw_to_index.setflags(write=False)
    return InstanceBenchmark(
        name="scannet20",
        class_ids=class_ids,
        class_names=tuple(classes["class_labels"]),
        class_splits=None,
        class_agnostic=False,
        raw_to_index=raw_to_index,
    )


@functools.lru_cache(maxsize=1)
def class_agnostic_instance_benchmark() -> InstanceBenchmark:
    """Every ScanNet200 thing class is one class "object" (ESAM's headline setting); stuff and unlabeled are void."""
    things = scannet200_instance_benchmark().raw_to_index
    raw_to_index = np.where(things == VOID, VOID, 0)
    raw_to_index.setflags(write=False)
    return InstanceBenchmark(
        name="scannet200_class_agnostic",
        class_ids=(CLASS_AGNOSTIC_LABEL_ID,),
        class_names=(CLASS_AGNOSTIC_NAME,),
        class_splits=None,
        class_agnostic=True,
        raw_to_index=raw_to_index,
    )


def instance_benchmark(name: str) -> InstanceBenchmark:
    """Benchmark by name: "scannet200", "scannet20" or "scannet200_class_agnostic" (e.g. from a config)."""
    factories = {
        "scannet200": scannet200_instance_benchmark,
        "scannet20": scannet20_instance_benchmark,
        "scannet200_class_agnostic": class_agnostic_instance_benchmark,
    }
    if name not in factories:
        raise ValueError(f"unknown instance benchmark {name!r}; expected one of {sorted(factories)}")
    return factories[name]()


def semantic_label_space(name: str) -> SemanticLabelSpace:
    """Semantic label space by name: "scannet200" or "scannet20"."""
    factories = {"scannet200": scannet200_semantic_space, "scannet20": scannet20_semantic_space}
    if name not in factories:
        raise ValueError(f"unknown semantic label space {name!r}; expected one of {sorted(factories)}")
    return factories[name]()
