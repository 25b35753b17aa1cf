"""The official import path ``models.transformer`` (DETR's transformer), re-exported from models/detr/transformer.py,
which owns it."""
from models.detr.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    build_transformer,
)

__all__ = ["Transformer", "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerEncoderLayer", "build_transformer"]
