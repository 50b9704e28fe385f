# UperNet with STViT-B, ADE20K 160k. Paper: 80M params, 1036G FLOPs, mIoU 50.7 / 51.9 (single / multi-scale).
_base_ = './upernet_stvit_s_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrained/stvit-base-224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 512]),
    auxiliary_head=dict(in_channels=384))
