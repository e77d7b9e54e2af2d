"""Pieces shared by the experiment modules."""

from __future__ import annotations

from typing import Any

from jaxrob import data


def load_splits(config: Any) -> tuple[data.Dataset, data.Dataset]:
    """The train and test splits of ``config.dataset`` (in memory), the train split cut to
    ``config.train_examples`` when set.

    Raises:
      ValueError: if ``config.batch_size`` exceeds the number of training examples.
    """
    train_ds = data.load(config.dataset, split="train", data_dir=config.data_dir)
    test_ds = data.load(config.dataset, split="test", data_dir=config.data_dir)
    if not train_ds.in_memory:
        train_ds, test_ds = data.to_memory(train_ds), data.to_memory(test_ds)
    if config.train_examples:
        n = min(config.train_examples, len(train_ds))
        train_ds = data.from_arrays(train_ds.images[:n], train_ds.labels[:n], num_classes=train_ds.num_classes,
                                    name=train_ds.name, split=f"train[:{n}]")
    if config.batch_size > len(train_ds):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_ds)} training examples")
    return train_ds, test_ds
