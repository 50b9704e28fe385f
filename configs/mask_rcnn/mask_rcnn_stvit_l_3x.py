# Mask R-CNN + FPN with STViT-L, COCO, 3x + multi-scale. Paper: box AP 51.7, mask AP 45.9.
_base_ = './mask_rcnn_stvit_s_3x.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='pretrained/stvit-large-224.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]))
