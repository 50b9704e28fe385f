# Ablation "+ CPE" of the paper's "Ablations of STViT" on ImageNet-1K at 224:
# STViT-S (../stvit/stvit_s_in1k_224.py, the authors' 300-epoch recipe) with
# only the component changed: + Projection with the convolutional position
# encoding before every block (x + DWConv3x3(x)): STViT-S with a plain MLP
# instead of the ConvFFN.
# Paper: 25.3M, 4.30G, top-1 83.3%. The components are STViT's arguments
# (mmstvit/models/backbones/ablation.py); no weights exist: this row is trained
# from scratch.
_base_ = '../stvit/stvit_s_in1k_224.py'

model = dict(
    backbone=dict(ffn='mlp'),
    head=dict(projection=1024))
