# Ablation "w/o CPE, + RPE" of the paper's "Ablations of STViT", Mask R-CNN 1x
# on COCO: ../mask_rcnn/mask_rcnn_stvit_s_1x.py with the backbone of
# stvit_s_rpe_in1k_224.py (the classifier's projection is not part of it),
# initialised from that row's own ImageNet model: train stvit_s_rpe_in1k_224.py
# first (in its default work dir; the checkpoint's weights are the EMA ones).
# Paper: box AP 45.6, mask AP 41.8.
_base_ = '../mask_rcnn/mask_rcnn_stvit_s_1x.py'

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
