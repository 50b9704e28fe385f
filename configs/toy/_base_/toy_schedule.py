# A CPU schedule for the toy set: 160 iterations, linear warm-up then cosine,
# on the AdamW recipe of the detection configs (lr 4e-4 for batch 2), with
# mmdet's default runtime logging and saving at the toy's intervals.
_base_ = [
    '../../_base_/schedules/det_adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
]

max_iters = 160
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
    val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR',
        T_max=max_iters - 50,
        eta_min=1e-5,
        by_epoch=False,
        begin=50,
        end=max_iters)
]
optim_wrapper = dict(optimizer=dict(lr=4e-4))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=80, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
