# Ablation "+ Conv Stem" of the paper's "Ablations of STViT" on ImageNet-1K at
# 224: STViT-S (../stvit/stvit_s_in1k_224.py, the authors' 300-epoch recipe)
# with only the component changed: the baseline with STViT's conv stem (four
# 3x3 convs, each with GELU and BN): no position encoding, a plain MLP, no
# projection.
# Paper: 24.2M, 4.26G, top-1 82.6%. The components are STViT's arguments
# (mmstvit/models/backbones/ablation.py); no weights exist: this row is trained
# from scratch.
_base_ = '../stvit/stvit_s_in1k_224.py'

model = dict(
    backbone=dict(pos_embed=None, ffn='mlp'),
    head=dict(projection=None))
