"""The DataLoaders of one ``fit``: built once, so that with ``data.num_workers > 0`` and
``data.persistent_workers`` the worker processes (and what they opened or verified, such as the
saliency cache's blocks) serve every epoch instead of being started again each epoch.

Exact ``--resume`` holds because the workers only read: every built-in dataset's
``__getitem__`` draws no random numbers, and augmentation runs per batch on the training device
(:meth:`xkd.data.JointAugment.augment_batch`). The epoch's batches are still the permutation
seeded by ``(seed, epoch)`` (:func:`xkd.engine.loop.epoch_batches`), handed to the one loader per
epoch through :class:`EpochBatches`.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from xkd.engine.env import derive_seed


class EpochBatches(Sampler[list[int]]):
    """A batch sampler whose batches are replaced each epoch (:meth:`set`); the DataLoader reads
    them when an epoch's iteration starts."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def set(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FitLoaders:
    """Training and validation loaders for one ``fit`` on one rank.

    ``persistent``: keep ``num_workers`` worker processes alive across epochs (only when
    ``num_workers > 0``). Otherwise a training loader is built per epoch with its workers seeded
    from ``(seed, epoch, rank)``, and validation builds its own loader (the behaviour before
    persistent workers, kept for datasets of one's own that draw random numbers in
    ``__getitem__``)."""

    def __init__(self, train_set: Dataset, val_set: Dataset | None, batch_size: int, num_workers: int,
                 persistent: bool, pin: bool, seed: int, rank: int) -> None:
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers, self.pin = batch_size, num_workers, pin
        self.seed, self.rank = seed, rank
        self.persistent = persistent and num_workers > 0
        self._sampler = EpochBatches()
        self._train: DataLoader | None = None
        self._val: DataLoader | None = None

    def train(self, batches: list[list[int]], epoch: int) -> DataLoader:
        """The loader that yields ``batches`` (this rank's, for ``epoch``)."""
        if not self.persistent:
            return DataLoader(self.train_set, batch_sampler=batches, num_workers=self.num_workers,
                              pin_memory=self.pin, generator=self._generator(epoch))
        self._sampler.set(batches)
        if self._train is None:
            self._train = DataLoader(self.train_set, batch_sampler=self._sampler,
                                     num_workers=self.num_workers, pin_memory=self.pin,
                                     persistent_workers=True, generator=self._generator(0))
        return self._train

    def val(self) -> DataLoader | Dataset | None:
        """The validation split in order: a persistent loader, else the dataset itself (the
        caller's :func:`xkd.engine.evaluate.collect` then builds a loader per call)."""
        if not self.persistent or self.val_set is None:
            return self.val_set
        if self._val is None:
            self._val = DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                                   num_workers=self.num_workers, pin_memory=self.pin,
                                   persistent_workers=True)
        return self._val

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, epoch, self.rank, 2))
