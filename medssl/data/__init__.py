"""Datasets: download layouts to sample tables, splits, image decoding and checks.

Importing this package registers every adapter: ham10000, isic, covid19, chest_xray, idrid,
folder, csv and demo.
"""

# Imported for registration, in the order `medssl datasets` lists them.
from medssl.data import ham10000, isic, covid19, chest_xray, idrid  # noqa: F401  isort: skip
from medssl.data import folder, csv_table, demo  # noqa: F401  isort: skip
from medssl.data.prepare import DataConfig, data_config, open_dataset, prepare, summary
from medssl.data.registry import ReadOptions, SampleTable, all_adapters, get_adapter

__all__ = ["DataConfig", "ReadOptions", "SampleTable", "all_adapters", "data_config",
           "get_adapter", "open_dataset", "prepare", "summary"]
