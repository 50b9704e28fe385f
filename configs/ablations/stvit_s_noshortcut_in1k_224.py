# Ablation "w/o shortcut" of the paper's "Ablations of STViT" on ImageNet-1K at
# 224: STViT-S (../stvit/stvit_s_in1k_224.py, the authors' 300-epoch recipe)
# with only the component changed: STViT-S with the ConvFFN's depthwise
# convolution without its shortcut: fc2(DWConv(h)) instead of fc2(h +
# DWConv(h)).
# Paper: 25.4M, 4.37G, top-1 83.4%. The components are STViT's arguments
# (mmstvit/models/backbones/ablation.py); no weights exist: this row is trained
# from scratch.
_base_ = '../stvit/stvit_s_in1k_224.py'

model = dict(
    backbone=dict(ffn='conv_no_shortcut'),
    head=dict(projection=1024))
