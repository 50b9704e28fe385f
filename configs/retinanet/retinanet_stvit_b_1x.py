# RetinaNet + FPN with STViT-B, COCO, 1x (the PVT recipe of
# retinanet_stvit_s_1x.py). Not in the paper.
_base_ = './retinanet_stvit_s_1x.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrained/stvit-base-224.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]))
