# Kept at the path of earlier releases. The config is
# configs/stvit/stvit_l_in1k_224.py,
# by scope (from any project) 'mmstvit::stvit/stvit_l_in1k_224.py'.
_base_ = './stvit/stvit_l_in1k_224.py'
