# Mask R-CNN + FPN with STViT-S, COCO, 3x (36 epochs) with Swin's multi-scale
# + crop training (_base_/datasets/coco_instance_ms_crop.py). Paper: box AP
# 49.2, mask AP 44.2.
_base_ = [
    '../_base_/models/mask_rcnn_stvit_s.py',
    '../_base_/datasets/coco_instance_ms_crop.py',
    '../_base_/schedules/det_adamw_3x.py',
    'mmdet::_base_/default_runtime.py',
]
