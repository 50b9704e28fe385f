# UperNet with STViT-L, ADE20K 160k. Paper: 125M params, 1151G FLOPs, mIoU 52.4 / 53.2 (single / multi-scale).
_base_ = './upernet_stvit_s_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='pretrained/stvit-large-224.pth')),
    decode_head=dict(in_channels=[96, 192, 448, 640]),
    auxiliary_head=dict(in_channels=448))
