# STViT-B fine-tuned at 384 (see stvit_s_in1k_384.py). Paper: 31.5G FLOPs, 86.0%.
_base_ = './stvit_s_in1k_384.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.4), head=dict(in_channels=512))
load_from = 'pretrained/stvit-base-224.pth'
