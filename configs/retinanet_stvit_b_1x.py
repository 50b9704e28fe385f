# Kept at the path of earlier releases. The config is
# configs/retinanet/retinanet_stvit_b_1x.py,
# by scope (from any project) 'mmstvit::retinanet/retinanet_stvit_b_1x.py'.
_base_ = './retinanet/retinanet_stvit_b_1x.py'
