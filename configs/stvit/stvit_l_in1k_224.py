# STViT-L on ImageNet-1K at 224, the authors' recipe (see stvit_s_in1k_224.py).
# Paper: 95M params, 15.6G FLOPs, 85.3%.
_base_ = './stvit_s_in1k_224.py'

model = dict(backbone=dict(arch='large', drop_path_rate=0.6), head=dict(in_channels=640))
