# Kept at the path of earlier releases. The config is
# configs/fpn/fpn_stvit_s_80k_ade20k.py,
# by scope (from any project) 'mmstvit::fpn/fpn_stvit_s_80k_ade20k.py'.
_base_ = './fpn/fpn_stvit_s_80k_ade20k.py'
