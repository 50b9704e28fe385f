# COCO detection, 1x (12 epochs), batch 16 (8 GPUs x 2): AdamW as Swin's
# recipe (lr 1e-4, wd 0.05), 1000 linear warm-up iterations, steps at 8 and
# 11; no weight decay on norms (LayerNorm and BatchNorm, including the
# conv-BN pairs of the stem and downsamples) and on STViT's layer scales.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=0.0001,
        betas=(0.9, 0.999),
        weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            '.gamma_1': dict(decay_mult=0.),
            '.gamma_2': dict(decay_mult=0.),
        }))
auto_scale_lr = dict(enable=False, base_batch_size=16)
