"""Data tools: the synthetic COCO-format dataset generator."""
