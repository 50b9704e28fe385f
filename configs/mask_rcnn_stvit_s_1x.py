# Mask R-CNN + FPN with STViT-S, COCO, 1x (12 epochs), batch 16 (8 GPUs x 2).
# Paper: 44M params, 252G FLOPs (1280x800), box AP 47.6, mask AP 43.1.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)

# the official ImageNet-1K file as downloaded (Google Drive, see README)
pretrained = 'pretrained/stvit-small-224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='STViT',
        arch='small',
        # dense prediction sizes: see docs/reference_numbers.md
        stoken_size=(16, 8, 2, 1),
        n_iter=1,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))

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
# AdamW as Swin's recipe; no weight decay on norms (LayerNorm and BatchNorm,
# including the conv-BN pairs of the stem and downsamples) and layer scales.
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
