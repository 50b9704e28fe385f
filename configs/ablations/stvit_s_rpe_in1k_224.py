# Ablation "w/o CPE, + RPE" of the paper's "Ablations of STViT" on ImageNet-1K
# at 224: STViT-S (../stvit/stvit_s_in1k_224.py, the authors' 300-epoch recipe)
# with only the component changed: a relative position bias instead of the CPE:
# in every attention over super tokens (over tokens where the super token size
# is 1) a learned table per head and block over the offsets of the super token
# grid at 224 (7, 7, 14 and 7 per stage; Swin's relative_position_bias_table),
# longer offsets clipped to its border; a plain MLP; the projection.
# Paper: 25.3M, 4.29G, top-1 83.2%. The components are STViT's arguments
# (mmstvit/models/backbones/ablation.py); no weights exist: this row is trained
# from scratch.
_base_ = '../stvit/stvit_s_in1k_224.py'

model = dict(
    backbone=dict(pos_embed='rpe', ffn='mlp'),
    head=dict(projection=1024))
# no weight decay on the position table (the authors' no_weight_decay)
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={'relative_position_bias_table': dict(decay_mult=0.)}))
