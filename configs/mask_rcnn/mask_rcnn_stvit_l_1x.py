# Mask R-CNN + FPN with STViT-L, COCO, 1x. Paper: 114M params, 470G FLOPs, box AP 50.8, mask AP 45.5.
_base_ = './mask_rcnn_stvit_s_1x.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='pretrained/stvit-large-224.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]))
