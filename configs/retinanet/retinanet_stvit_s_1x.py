# RetinaNet + FPN with STViT-S, COCO, 1x (12 epochs), batch 16 (8 GPUs x 2),
# single-scale 1333x800 training: the PVT protocol (mmdet's
# configs/pvt/retinanet_pvt-*_fpn_1x_coco.py: AdamW lr 1e-4, wd 1e-4, steps at
# 8 and 11). Not in the paper.
_base_ = [
    '../_base_/models/retinanet_stvit_s.py',
    'mmdet::_base_/datasets/coco_detection.py',
    '../_base_/schedules/det_adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
]

# PVT's recipe differs from Swin's (the schedule base) in weight decay, 1e-4
# instead of 0.05, and in mmdet's 500-iteration warm-up
optim_wrapper = dict(optimizer=dict(weight_decay=0.0001))
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=12,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
