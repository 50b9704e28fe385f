# Mask R-CNN + FPN with STViT-B, COCO, 3x + multi-scale. Paper: box AP 51.0, mask AP 45.4.
_base_ = './mask_rcnn_stvit_s_3x.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrained/stvit-base-224.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]))
