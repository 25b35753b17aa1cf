"""COCO's category ids: 80 categories numbered 1..90 with ten numbers unused."""

# label i of an 80-class COCO model is category COCO_80_CATEGORY_IDS[i] (the official RT-DETR's
# mscoco_label2category table)
COCO_80_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
