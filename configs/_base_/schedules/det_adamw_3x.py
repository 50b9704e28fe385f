# COCO detection, 3x (36 epochs): det_adamw_1x.py with steps at 27 and 33
# (Swin's and CSWin's 3x recipe).
_base_ = './det_adamw_1x.py'

max_epochs = 36
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
        milestones=[27, 33],
        gamma=0.1)
]
