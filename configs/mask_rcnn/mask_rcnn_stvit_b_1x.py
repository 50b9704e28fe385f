# Mask R-CNN + FPN with STViT-B, COCO, 1x. Paper: 70M params, 359G FLOPs, box AP 49.7, mask AP 44.8.
_base_ = './mask_rcnn_stvit_s_1x.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrained/stvit-base-224.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]))
