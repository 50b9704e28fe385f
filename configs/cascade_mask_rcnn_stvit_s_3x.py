# Kept at the path of earlier releases. The config is
# configs/cascade_mask_rcnn/cascade_mask_rcnn_stvit_s_3x.py,
# by scope (from any project) 'mmstvit::cascade_mask_rcnn/cascade_mask_rcnn_stvit_s_3x.py'.
_base_ = './cascade_mask_rcnn/cascade_mask_rcnn_stvit_s_3x.py'
