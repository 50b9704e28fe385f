# Kept at the path of earlier releases. The config is
# configs/upernet/upernet_stvit_l_160k_ade20k.py,
# by scope (from any project) 'mmstvit::upernet/upernet_stvit_l_160k_ade20k.py'.
_base_ = './upernet/upernet_stvit_l_160k_ade20k.py'
