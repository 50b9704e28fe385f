# Kept at the path of earlier releases. The config is
# configs/stvit/stvit_s_in1k_384.py,
# by scope (from any project) 'mmstvit::stvit/stvit_s_in1k_384.py'.
_base_ = './stvit/stvit_s_in1k_384.py'
