"""scikit-learn's 8x8 handwritten digits: the default offline dataset (1797 examples, ships with sklearn)."""

from __future__ import annotations

import numpy as np

from fedsim.argspec import ArgSpec, declares
from fedsim.data.base import DATASETS, TEST_SPLIT, DataRequest, SplitData, stratified_split


@DATASETS.register("digits")
@declares(ArgSpec(), task="classification")
def digits(request: DataRequest) -> SplitData:
    """The UCI optical-recognition digits as 64 features scaled to [0, 1], 10 classes.

    The central test set is a seeded stratified ``test_fraction`` split. ``data.args`` takes no keys.

    References:
        Alpaydin, E. and Kaynak, C., "Optical Recognition of Handwritten Digits", UCI Machine Learning
        Repository, 1998 (the 8x8 version shipped as ``sklearn.datasets.load_digits``).
    """
    from sklearn.datasets import load_digits  # imported here: importing sklearn takes about a second

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel counts are 0..16
    y = y.astype(np.int64)
    train, test = stratified_split(y, request.test_fraction, request.rng(TEST_SPLIT))
    return SplitData(train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test], num_classes=10)
