# Cascade Mask R-CNN + FPN with STViT-B, COCO, 3x + multi-scale (the recipe
# of cascade_mask_rcnn_stvit_s_3x.py). Not in the paper's tables.
_base_ = './cascade_mask_rcnn_stvit_s_3x.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrained/stvit-base-224.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]))
