# Kept at the path of earlier releases. The config is
# configs/mask_rcnn/mask_rcnn_stvit_b_3x.py,
# by scope (from any project) 'mmstvit::mask_rcnn/mask_rcnn_stvit_b_3x.py'.
_base_ = './mask_rcnn/mask_rcnn_stvit_b_3x.py'
