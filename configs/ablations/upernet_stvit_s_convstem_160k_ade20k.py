# Ablation "+ Conv Stem" of the paper's "Ablations of STViT", UperNet 160k on
# ADE20K: ../upernet/upernet_stvit_s_160k_ade20k.py with the backbone of
# stvit_s_convstem_in1k_224.py (the classifier's projection is not part of it),
# initialised from that row's own ImageNet model: train
# stvit_s_convstem_in1k_224.py first (in its default work dir; the checkpoint's
# weights are the EMA ones). Paper: mIoU 46.9.
_base_ = '../upernet/upernet_stvit_s_160k_ade20k.py'

pretrained = 'work_dirs/stvit_s_convstem_in1k_224/epoch_300.pth'
model = dict(
    backbone=dict(
        pos_embed=None, ffn='mlp',
        init_cfg=dict(checkpoint=pretrained)))
