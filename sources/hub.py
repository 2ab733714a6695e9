"""Hub data sets as frames per split, through the datasets library, with the label names of a ClassLabel; the
Hub data sets bertlab knows by short name, with their columns."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sources.files import SPLIT_FILE_STEMS, SPLITS
from utils import ConfigError


@dataclass(frozen=True)
class HubDataset:
    hub_id: str
    text_column: str
    label_column: str


# Known Hub data sets by short name, with their columns; any other Hub id works with explicit columns.
HUB_DATASETS = {
    "ag_news": HubDataset("fancyzhx/ag_news", "text", "label"),
    "imdb": HubDataset("stanfordnlp/imdb", "text", "label"),
    "banking77": HubDataset("PolyAI/banking77", "text", "label"),
    "trec": HubDataset("CogComp/trec", "text", "coarse_label"),
    "emotion": HubDataset("dair-ai/emotion", "text", "label"),
}


def read_hub(hub_id: str, label_column: str) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id)
    except Exception as err:  # the datasets library raises many types for "not reachable/not found"
        raise ConfigError(
            f"data.name: could not load Hub data set '{hub_id}' ({type(err).__name__}: {str(err)[:200]}). "
            "The Hub may be unreachable from this machine: point data.path at a local file or folder instead"
        ) from None
    frames = {}
    for split in SPLITS:
        source = next((s for s in (split, *SPLIT_FILE_STEMS[split]) if s in dataset), None)
        if source is not None:
            frames[split] = dataset[source].to_pandas()
    if "train" not in frames:
        raise ConfigError(
            f"data.name: Hub data set '{hub_id}' has no train split (it has {', '.join(dataset)})"
        )
    feature = dataset["train"].features.get(label_column)
    feature = getattr(feature, "feature", feature)  # a list of tags: its items' feature
    label_names = list(feature.names) if hasattr(feature, "names") else None  # a ClassLabel: keep its names
    return frames, label_names
