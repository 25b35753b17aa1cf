"""What the tests against saved official values (tests/golden/, written by tools/reference/) share: COCO's category
ids and the comparison of a case's values."""
import torch

# COCO's category ids: 1..90 without the ten unused ones, in increasing order (label i -> i-th id)
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def assert_same_values(actual: dict, expected: dict, what: str) -> None:
    """The same keys; float tensors equal to 1e-12 relative to each value and to the tensor's largest magnitude (at
    least 1), everything else exactly.

    The tensor-wide part absorbs float64 sums taken in another order (BLAS blocking differs between CPUs), which can
    leave a near-cancelled entry off by a few 1e-12 of its neighbours' size; a float32 rounding difference (1e-7) is
    still far outside it."""
    assert sorted(actual) == sorted(expected), (what, sorted(set(actual) ^ set(expected)))
    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = value[value.isfinite()].abs()
            scale = max(1.0, finite.max().item()) if finite.numel() else 1.0
            torch.testing.assert_close(actual[key], value, rtol=1e-12, atol=1e-12 * scale, msg=f"{what} {key}")
        elif isinstance(value, torch.Tensor):
            assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), (what, key)
        else:
            assert actual[key] == value, (what, key)
