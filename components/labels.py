"""ScanNet label tables: raw category -> ScanNet200 id (the tsv `id` column) and nyu40id (ScanNet20).

Copied into the package from the ScanNet benchmark so the product never reads `../shared` at run time.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class LabelTable:
    """Raw-category lookups and the benchmark class lists."""

    raw_to_id: dict[str, int]  # raw_category -> ScanNet200 raw id (0 = unannotated)
    raw_to_nyu40: dict[str, int]
    scannet200_ids: tuple[int, ...]
    scannet200_names: tuple[str, ...]
    scannet20_ids: tuple[int, ...]  # nyu40 ids
    scannet20_names: tuple[str, ...]
    split_of_name: dict[str, str]  # ScanNet200 name -> "head" | "common" | "tail"

    def scannet200_id(self, raw_category: str) -> int:
        """Raw id of a category, 0 when the category is not in the table (ScanNet: unannotated)."""
        return self.raw_to_id.get(raw_category, 0)

    def nyu40_id(self, raw_category: str) -> int:
        return self.raw_to_nyu40.get(raw_category, 0)


@functools.lru_cache(maxsize=1)
def label_table() -> LabelTable:
    data_dir = resources.files("bifusion.components.data")
    raw_to_id: dict[str, int] = {}
    raw_to_nyu40: dict[str, int] = {}
    with (data_dir / "scannetv2-labels.combined.tsv").open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            raw_to_id[row["raw_category"]] = int(row["id"])
            raw_to_nyu40[row["raw_category"]] = int(row["nyu40id"]) if row["nyu40id"] else 0
    classes = json.loads((data_dir / "scannet_classes.json").read_text())
    s200, s20 = classes["scannet200"], classes["scannet20"]
    split_of_name = {name: split for split in ("head", "common", "tail") for name in s200[split]}
    return LabelTable(
        raw_to_id=raw_to_id,
        raw_to_nyu40=raw_to_nyu40,
        scannet200_ids=tuple(s200["valid_class_ids"]),
        scannet200_names=tuple(s200["class_labels"]),
        scannet20_ids=tuple(s20["valid_class_ids"]),
        scannet20_names=tuple(s20["class_labels"]),
        split_of_name=split_of_name,
    )
