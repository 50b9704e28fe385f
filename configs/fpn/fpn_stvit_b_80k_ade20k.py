# Semantic FPN with STViT-B, ADE20K 80k (the PVT recipe of
# fpn_stvit_s_80k_ade20k.py). Not in the paper.
_base_ = './fpn_stvit_s_80k_ade20k.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrained/stvit-base-224.pth')),
    neck=dict(in_channels=[96, 192, 384, 512]))
