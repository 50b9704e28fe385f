# Cascade Mask R-CNN + FPN with STViT-L, COCO, 3x + multi-scale (the recipe
# of cascade_mask_rcnn_stvit_s_3x.py). Not in the paper's tables; CSWin-B
# reports 53.9 box / 46.4 mask AP with this protocol.
_base_ = './cascade_mask_rcnn_stvit_s_3x.py'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='pretrained/stvit-large-224.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]))
