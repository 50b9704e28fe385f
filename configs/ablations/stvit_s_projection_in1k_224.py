# Ablation "+ Projection" of the paper's "Ablations of STViT" on ImageNet-1K at
# 224: STViT-S (../stvit/stvit_s_in1k_224.py, the authors' 300-epoch recipe)
# with only the component changed: + Conv Stem with the classifier's projection
# before pooling (a 1x1 conv to 1024, BN, Swish): no position encoding, a plain
# MLP. Its backbone is + Conv Stem's; only the classifier differs.
# Paper: 25.2M, 4.29G, top-1 82.9%. The components are STViT's arguments
# (mmstvit/models/backbones/ablation.py); no weights exist: this row is trained
# from scratch.
_base_ = '../stvit/stvit_s_in1k_224.py'

model = dict(
    backbone=dict(pos_embed=None, ffn='mlp'),
    head=dict(projection=1024))
