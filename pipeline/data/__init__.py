"""Data layer: canonical tables, loaders, validation, the synthetic generator and splits."""
from pipeline.data.amazon import load_amazon
from pipeline.data.dataset import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    Dataset,
    assemble,
    shuffle_ties,
)
from pipeline.core.splits import Split, leave_one_out, sort_interactions, temporal_split
from pipeline.data.generic import load_generic
from pipeline.data.loaders import LOADERS, default_data_root, load_dataset
from pipeline.data.movielens import load_movielens
from pipeline.data.synthetic import synthesize, synthesize_catalog
from pipeline.data.validate import DataValidationError

__all__ = [
    "INTERACTION_COLUMNS",
    "ITEM_COLUMNS",
    "LOADERS",
    "DataValidationError",
    "Dataset",
    "Split",
    "assemble",
    "shuffle_ties",
    "default_data_root",
    "leave_one_out",
    "load_amazon",
    "load_dataset",
    "load_generic",
    "load_movielens",
    "sort_interactions",
    "synthesize",
    "synthesize_catalog",
    "temporal_split",
]
