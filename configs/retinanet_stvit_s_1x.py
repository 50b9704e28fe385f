# RetinaNet + FPN with STViT-S, COCO, 1x (12 epochs), batch 16 (8 GPUs x 2),
# single-scale 1333x800 training: the PVT protocol (mmdet's
# configs/pvt/retinanet_pvt-*_fpn_1x_coco.py: AdamW lr 1e-4, wd 1e-4, steps at
# 8 and 11). Not in the paper.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
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
        stoken_size=(16, 8, 2, 1),  # dense prediction
        n_iter=1,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # the base's FPN: P3-P5 from stages 2-4 (start_level=1), P6/P7 by
    # stride-2 convs on stage 4's output
    neck=dict(in_channels=[64, 128, 320, 512]))

# AdamW as PVT's RetinaNet recipe; no weight decay on norms and layer scales
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=0.0001,
        betas=(0.9, 0.999),
        weight_decay=0.0001),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            '.gamma_1': dict(decay_mult=0.),
            '.gamma_2': dict(decay_mult=0.),
        }))
auto_scale_lr = dict(enable=False, base_batch_size=16)
