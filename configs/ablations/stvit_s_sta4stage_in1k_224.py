# Ablation "STA-4stage" of the paper's "Ablations of STViT" on ImageNet-1K at
# 224: STViT-S (../stvit/stvit_s_in1k_224.py, the authors' 300-epoch recipe)
# with only the component changed: the paper's baseline: super token attention
# in STViT-S's four stages, with Swin's patch embedding (a 4x4 stride-4 conv
# and LayerNorm) instead of the conv stem, no position encoding, a plain MLP
# instead of the ConvFFN and no projection before the classifier (the 3x3
# stride-2 downsamples stay: with Swin's patch merging the count would be 1.1M
# lower).
# Paper: 24.1M, 3.97G, top-1 82.3%. The components are STViT's arguments
# (mmstvit/models/backbones/ablation.py); no weights exist: this row is trained
# from scratch.
_base_ = '../stvit/stvit_s_in1k_224.py'

model = dict(
    backbone=dict(stem='patch', pos_embed=None, ffn='mlp'),
    head=dict(projection=None))
