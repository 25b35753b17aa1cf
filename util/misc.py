"""Import paths of the official DETR's ``util.misc`` that user code relies on, re-exported.

New code should import from the modules that own these names.
"""
from util.distributed import all_gather, get_rank, get_world_size, is_dist_avail_and_initialized, is_main_process
from util.metric_logger import MetricLogger, SmoothedValue
from util.nested_tensor import NestedTensor, collate_fn, nested_tensor_from_tensor_list

__all__ = [
    "NestedTensor", "nested_tensor_from_tensor_list", "collate_fn", "MetricLogger", "SmoothedValue",
    "all_gather", "get_rank", "get_world_size", "is_dist_avail_and_initialized", "is_main_process",
]
