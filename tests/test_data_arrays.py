"""Data from memory (cifarzoo.data.arrays): the accepted forms, and one clear error per mistake."""
from __future__ import annotations

import re

import numpy as np
import pytest

from cifarzoo.data import build_dataset
from cifarzoo.data.arrays import CIFAR10_CLASSES, as_keras_arrays, from_arrays
from cifarzoo.errors import DataError


def _arrays(fake):
    return [fake.train_images, fake.train_labels, fake.test_images, fake.test_labels]


def test_keras_and_flat_forms_build_the_same_dataset_as_a_file_source(fake_cifar):
    ref = build_dataset(*_arrays(fake_cifar), fake_cifar.classes, "ref")
    keras = ((fake_cifar.train_images, fake_cifar.train_labels[:, None].astype(np.uint8)),
             (fake_cifar.test_images, fake_cifar.test_labels[:, None].astype(np.uint8)))
    for data in (tuple(_arrays(fake_cifar)), keras, _arrays(fake_cifar)):
        ds = from_arrays(data)
        assert ds.classes == CIFAR10_CLASSES == tuple(fake_cifar.classes)
        assert ds.train_labels.dtype == np.int64 and ds.train_labels.shape == (60,)
        np.testing.assert_array_equal(ds.train_images, ref.train_images)
        np.testing.assert_array_equal(ds.test_labels, ref.test_labels)
        assert ds.mean == ref.mean and ds.std == ref.std  # the same statistics as every source
    assert from_arrays(keras).source == "arrays in memory"


def test_integer_pixels_in_range_are_converted_without_loss(fake_cifar):
    data = _arrays(fake_cifar)
    data[0] = data[0].astype(np.int32)
    np.testing.assert_array_equal(from_arrays(data).train_images, fake_cifar.train_images)


def test_given_class_names_and_keras_round_trip(fake_cifar):
    names = [f"c{i}" for i in range(10)]
    ds = from_arrays(_arrays(fake_cifar), classes=names)
    assert ds.classes == tuple(names)
    (xt, yt), (xs, ys) = as_keras_arrays(ds)
    assert yt.shape == (60, 1) and yt.dtype == np.uint8 and xs.shape == (20, 32, 32, 3)


def _set(i, value_fn):
    def mutate(data):
        data[i] = value_fn(data[i])
        return data
    return mutate


CASES = {
    "channels first": (_set(0, lambda x: x.transpose(0, 3, 1, 2)),
                       "x_train: expected shape (N, 32, 32, 3), got (60, 3, 32, 32) (channels first? "
                       "use x.transpose(0, 2, 3, 1))"),
    "wrong size": (_set(2, lambda x: x[:, :28, :28]), "x_test: expected shape (N, 32, 32, 3), got (20, 28, 28, 3)"),
    "grayscale": (_set(0, lambda x: x[..., 0]), "x_train: expected shape (N, 32, 32, 3), got (60, 32, 32) (grayscale?"),
    "float 0..1": (_set(0, lambda x: x.astype(np.float32) / 255),
                   "x_train: expected uint8 pixels in 0..255, got float32 (floats are ambiguous: 0..1 or 0..255?)"),
    "float 0..255": (_set(2, lambda x: x.astype(np.float64)), "x_test: expected uint8 pixels in 0..255, got float64"),
    "int out of range": (_set(0, lambda x: x.astype(np.int16) * 2),
                         "x_train: pixel values must lie in 0..255, found"),
    "no images": (_set(0, lambda x: x[:0]), "x_train: holds no images (shape (0, 32, 32, 3))"),
    "strings": (_set(0, lambda x: np.full(x.shape, "a")), "x_train: expected uint8 pixels in 0..255, got dtype <U1"),
    "one-hot": (_set(1, lambda y: np.eye(10, dtype=np.uint8)[y]),
                "y_train: expected class indices of shape (60,) or (60, 1), got (60, 10) (one-hot? use y.argmax(1))"),
    "3-d labels": (_set(3, lambda y: y[:, None, None]),
                   "y_test: expected class indices of shape (N,) or (N, 1), got (20, 1, 1)"),
    "label count": (_set(1, lambda y: y[:-1]), "y_train: 59 labels for the 60 images of x_train"),
    "float labels": (_set(3, lambda y: y.astype(np.float64)),
                     "y_test: expected integer class indices, got float64 (convert with y.astype(int))"),
    "label range": (_set(1, lambda y: np.where(y == 3, 10, y)),
                    "y_train: labels must lie in 0..9 for CIFAR-10's 10 classes (the default; pass classes=[...] "
                    "for other data), found 10 (6 labels out of range)"),
    "negative test label": (_set(3, lambda y: np.where(y == 0, -1, y)), "y_test: labels must lie in 0..9"),
    "missing class": (lambda d: [d[0][d[1] != 9], d[1][d[1] != 9], d[2], np.where(d[3] == 9, 0, d[3])],
                      "y_train: class 9 ('truck') has no training image (1 of 10 classes have none)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_gets_one_line_naming_it(fake_cifar, case):
    mutate, message = CASES[case]
    with pytest.raises(DataError) as err:
        from_arrays(mutate(_arrays(fake_cifar)))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("classes, message", [
    (["a", "b", "c"], "y_train: labels must lie in 0..2 for the 3 classes given, found"),
    ("airplane", "classes: expected a list of class names, got the string 'airplane'"),
    ([], "classes: the list of class names is empty"),
    (list(CIFAR10_CLASSES[:9]) + ["cat"], "classes: 'cat' appears more than once"),
])
def test_class_names_are_checked_against_the_labels(fake_cifar, classes, message):
    with pytest.raises(DataError, match=re.escape(message)):
        from_arrays(_arrays(fake_cifar), classes=classes)


@pytest.mark.parametrize("data, message", [
    (lambda d: tuple(d[:3]), "data: got a tuple of 3 items (array (60, 32, 32, 3), array (60,), "
                             "array (20, 32, 32, 3)); give (x_train, y_train, x_test, y_test) or "
                             "((x_train, y_train), (x_test, y_test))"),
    (lambda d: (d[0], d[1]), "data: got a tuple of 2 items"),
    (lambda d: "sample", "data: expected arrays, got str"),
])
def test_wrong_forms_say_which_forms_are_accepted(fake_cifar, data, message):
    with pytest.raises(DataError, match=re.escape(message)):
        from_arrays(data(_arrays(fake_cifar)))
