"""Label inference from one device's model update, by an honest-but-curious server.

The server decodes each device's update, so it holds the device's ``local`` state and the round's global
``base`` (numpy arrays, same keys and shapes). With softmax cross-entropy the gradient of the last layer's
bias for class ``c`` is the batch mean of ``p_c - [y == c]``: negative for a class in the batch (its
probability is below its share of the labels once the model is uncertain), positive for an absent class
(``p_c > 0`` and no label). Gradient descent therefore raises the bias of the present classes and lowers the
others; the same holds for the sum of the class's weight row when the features are non-negative (after a
ReLU): its gradient is the mean of ``(p_c - [y == c]) * sum(h)``. This is the observation behind iDLG (Zhao
et al. 2020, "iDLG: Improved Deep Leakage from Gradients") and LLG (Wainakh et al. 2022, "User-Level Label
Leakage from Gradients in Federated Learning"), here applied to a multi-step update rather than a gradient.

Examples
--------
>>> base = {"fc.weight": np.zeros((3, 2)), "fc.bias": np.zeros(3)}
>>> local = {"fc.weight": np.zeros((3, 2)), "fc.bias": np.array([0.1, -0.2, 0.05])}
>>> label_scores(local, base, 3).tolist()
[0.1, -0.2, 0.05]
"""

from __future__ import annotations

import numpy as np

from fleet.privacy.membership import roc_auc
from fleet.quant.spec import is_quantizer_key

__all__ = ["classifier_keys", "label_inference_auc", "label_scores"]


def classifier_keys(state: dict[str, np.ndarray], num_classes: int) -> tuple[str, str | None]:
    """The state keys of the output layer: its weight and its bias (``None`` if it has none).

    The weight is the last 2-D array (in dict order, quantizer steps skipped) whose first dimension is
    ``num_classes``; the bias is the same prefix plus ``"bias"`` if that key holds a ``(num_classes,)`` array.

    Raises
    ------
    ValueError
        If no array fits, naming the shapes seen.
    """
    weight = None
    for key, value in state.items():
        if not is_quantizer_key(key) and np.ndim(value) == 2 and np.shape(value)[0] == num_classes:
            weight = key
    if weight is None:
        shapes = {k: tuple(np.shape(v)) for k, v in state.items()}
        raise ValueError(f"no 2-D weight with {num_classes} rows among the state's shapes {shapes}")
    prefix = weight[: -len("weight")] if weight.endswith("weight") else weight + "."
    bias = prefix + "bias"
    if bias in state and tuple(np.shape(state[bias])) == (num_classes,):
        return weight, bias
    return weight, None


def label_scores(local: dict[str, np.ndarray], base: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    """A per-class score, high for the classes in the device's training data.

    ``score_c`` is the change of the output layer's bias, ``local - base``, if the layer has a bias, else the
    sum of the change of the class's weight row. The bias alone is used when it exists: its sign carries the
    label signal whatever the features, whereas the row sum carries it only when the features entering the
    layer are non-negative (a ReLU before it), and is weighted by their magnitude. Measured on digits with
    the MLP (30 devices of 1 to 5 classes, 1 to 39 samples each, 10 local SGD epochs), the bias, the row sum
    and their sum gave the same AUC (about 1.0 from an untrained global model, 0.87 from a trained one), so
    adding the row sum buys nothing.

    Returns
    -------
    np.ndarray
        Shape ``(num_classes,)``, float64.
    """
    weight, bias = classifier_keys(base, num_classes)
    if bias is not None:
        return np.asarray(local[bias], np.float64) - np.asarray(base[bias], np.float64)
    delta = np.asarray(local[weight], np.float64) - np.asarray(base[weight], np.float64)
    return delta.sum(axis=1)


def label_inference_auc(scores: np.ndarray, present: np.ndarray) -> float:
    """AUC of ``scores`` against the 0/1 vector "class is in the device's data"; NaN if all or none are."""
    return roc_auc(scores, np.asarray(present).astype(bool))
