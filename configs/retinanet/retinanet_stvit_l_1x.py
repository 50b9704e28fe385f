# RetinaNet + FPN with STViT-L, COCO, 1x (the PVT recipe of
# retinanet_stvit_s_1x.py). Not in the paper.
_base_ = './retinanet_stvit_s_1x.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='pretrained/stvit-large-224.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]))
