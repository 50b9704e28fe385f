# Ablation "w/o CPE, + APE" of the paper's "Ablations of STViT" on ImageNet-1K
# at 224: STViT-S (../stvit/stvit_s_in1k_224.py, the authors' 300-epoch recipe)
# with only the component changed: an absolute position embedding instead of
# the CPE: Swin's learned table (1, 64, 56, 56) added to the stem's output,
# resized bicubically for other input sizes; a plain MLP. No projection: the
# paper gives this row 24.2M and 4.26G, the figures of + Conv Stem, 1.0M and
# 0.03G below + Projection, which only a model without the projection has (with
# it this row would count 25.4M, 5% over the paper's; without it 24.4M, +0.8%).
# Paper: 24.2M, 4.26G, top-1 83.1%. The components are STViT's arguments
# (mmstvit/models/backbones/ablation.py); no weights exist: this row is trained
# from scratch.
_base_ = '../stvit/stvit_s_in1k_224.py'

model = dict(
    backbone=dict(pos_embed='ape', ffn='mlp'),
    head=dict(projection=None))
# no weight decay on the position table (the authors' no_weight_decay)
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'absolute_pos_embed': dict(decay_mult=0.)}))
