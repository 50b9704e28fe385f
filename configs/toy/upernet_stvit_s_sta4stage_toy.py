# The toy demo's UperNet (upernet_stvit_s_toy.py) with the backbone of the
# ablation's baseline, "STA-4stage" (configs/ablations/
# upernet_stvit_s_sta4stage_160k_ade20k.py): Swin's patch embedding instead
# of the conv stem, no position encoding, a plain MLP instead of the ConvFFN.
# A check that the switches train on a CPU beside the full model, not a
# measurement of the paper's ablation.
_base_ = ['./upernet_stvit_s_toy.py']

model = dict(backbone=dict(stem='patch', pos_embed=None, ffn='mlp'))
