# Example: fine-tuning the ImageNet STViT-S in Cascade Mask R-CNN 3x + MS
# with layer-wise learning-rate decay; everything else as
# cascade_mask_rcnn_stvit_s_3x.py. Block j of stage i sits at depth
# sum(depths[:i]) + j + 1 of 22 (the stem at 0, neck and heads at 21) and
# trains at lr * 0.9 ** (21 - depth): 0.11 x lr for the stem, the full lr
# for the heads. lr 2e-4 with decay, as mmdet's ConvNeXt cascade 3x recipe;
# an untuned starting point, no result of it is claimed.
# decay_type='stage_wise' gives one depth per stage instead (0.9 ** 5 for
# the stem). Norms, biases and layer scales get no weight decay (the
# constructor's defaults).
_base_ = './cascade_mask_rcnn_stvit_s_3x.py'

optim_wrapper = dict(
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(lr=0.0002),
    paramwise_cfg=dict(
        _delete_=True, decay_rate=0.9, decay_type='layer_wise'))
