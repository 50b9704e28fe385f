# STViT-B on ImageNet-1K at 224, the authors' recipe (see stvit_s_in1k_224.py).
# Paper: 52M params, 9.9G FLOPs, 84.8%.
_base_ = './stvit_s_in1k_224.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.4), head=dict(in_channels=512))
