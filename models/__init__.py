"""DETR models: ``build_model(args)`` -> (model, criterion, postprocessors)."""
from models.detr import build


def build_model(args):
    return build(args)
