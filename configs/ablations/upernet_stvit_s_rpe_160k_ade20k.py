# Ablation "w/o CPE, + RPE" of the paper's "Ablations of STViT", UperNet 160k
# on ADE20K: ../upernet/upernet_stvit_s_160k_ade20k.py with the backbone of
# stvit_s_rpe_in1k_224.py (the classifier's projection is not part of it),
# initialised from that row's own ImageNet model: train stvit_s_rpe_in1k_224.py
# first (in its default work dir; the checkpoint's weights are the EMA ones).
# Paper: mIoU 47.5.
_base_ = '../upernet/upernet_stvit_s_160k_ade20k.py'

pretrained = 'work_dirs/stvit_s_rpe_in1k_224/epoch_300.pth'
model = dict(
    backbone=dict(
        pos_embed='rpe', ffn='mlp',
        # the ImageNet model's tables (its super token grids at 224)
        rel_pos_grid=(7, 7, 14, 7),
        init_cfg=dict(checkpoint=pretrained)))
# no weight decay on the position table (as for norms and layer scales)
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'relative_position_bias_table': dict(decay_mult=0.)}))
