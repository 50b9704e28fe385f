# STViT-L fine-tuned at 384 (see stvit_s_in1k_384.py). Paper: 49.7G FLOPs, 86.4%.
_base_ = './stvit_s_in1k_384.py'

model = dict(backbone=dict(arch='large', drop_path_rate=0.6), head=dict(in_channels=640))
load_from = 'pretrained/stvit-large-224.pth'
