"""Evaluation protocols: how a target user's recordings become calibration (training) and test data."""
from __future__ import annotations

from typing import Sequence

from ..data.recordings import Recording

__all__ = ["split_target"]


def split_target(recordings: Sequence[Recording], target_user: str, *, train_side: int = 0
                 ) -> tuple[list[Recording], list[Recording], list[Recording]]:
    """Split watch recordings into (source, target_train, target_test).

    Target training data are the target's recordings of arm ``train_side``;
    its other arm side is the test set.

    Raises
    ------
    ValueError
        If the target user is unknown or lacks recordings of either side.
    """
    users = sorted({r.user for r in recordings})
    if target_user not in users:
        raise ValueError(f"target_user {target_user!r} not found; users are {users}")
    source = [r for r in recordings if r.user != target_user]
    tgt = [r for r in recordings if r.user == target_user]
    train = [r for r in tgt if r.meta.get("side") == train_side]
    test = [r for r in tgt if r.meta.get("side") != train_side]
    if not train or not test or not source:
        raise ValueError(f"target_user {target_user!r} needs recordings on both arm sides and source users; got "
                         f"{len(train)} train, {len(test)} test, {len(source)} source recordings")
    return source, train, test
