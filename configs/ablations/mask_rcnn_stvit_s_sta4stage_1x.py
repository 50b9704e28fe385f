# Ablation "STA-4stage" of the paper's "Ablations of STViT", Mask R-CNN 1x on
# COCO: ../mask_rcnn/mask_rcnn_stvit_s_1x.py with the backbone of
# stvit_s_sta4stage_in1k_224.py (the classifier's projection is not part of
# it), initialised from that row's own ImageNet model: train
# stvit_s_sta4stage_in1k_224.py first (in its default work dir; the
# checkpoint's weights are the EMA ones). Paper: box AP 43.6, mask AP 40.1.
_base_ = '../mask_rcnn/mask_rcnn_stvit_s_1x.py'

pretrained = 'work_dirs/stvit_s_sta4stage_in1k_224/epoch_300.pth'
model = dict(
    backbone=dict(
        stem='patch', pos_embed=None, ffn='mlp',
        init_cfg=dict(checkpoint=pretrained)))
