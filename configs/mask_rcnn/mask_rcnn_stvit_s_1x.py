# Mask R-CNN + FPN with STViT-S, COCO, 1x (12 epochs), batch 16 (8 GPUs x 2).
# Paper: 44M params, 252G FLOPs (1280x800), box AP 47.6, mask AP 43.1.
# The backbone: _base_/models/mask_rcnn_stvit_s.py; the AdamW schedule:
# _base_/schedules/det_adamw_1x.py.
_base_ = [
    '../_base_/models/mask_rcnn_stvit_s.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/det_adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
]
