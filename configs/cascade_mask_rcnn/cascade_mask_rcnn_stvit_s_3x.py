# Cascade Mask R-CNN + FPN with STViT-S, COCO, 3x (36 epochs) with
# multi-scale + crop training, batch 16 (8 GPUs x 2): the protocol of the
# peers' headline COCO figures (Swin's and CSWin's cascade_mask_rcnn_*_3x
# configs: 4conv1fc box heads with SyncBN and GIoU loss, AdamW lr 1e-4,
# wd 0.05, steps at 27 and 33). Not in the paper's tables (its abstract's
# 53.9 box / 46.8 mask AP names no model or protocol).
_base_ = [
    '../_base_/models/cascade_mask_rcnn_stvit_s.py',
    '../_base_/datasets/coco_instance_ms_crop.py',
    '../_base_/schedules/det_adamw_3x.py',
    'mmdet::_base_/default_runtime.py',
]
