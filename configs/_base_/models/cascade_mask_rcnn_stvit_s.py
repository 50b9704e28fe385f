# Cascade Mask R-CNN + FPN (mmdet's cascade-mask-rcnn_r50_fpn.py) with
# STViT-S as backbone and the box heads of Swin's and CSWin's
# cascade_mask_rcnn_*_3x configs: 4conv1fc with SyncBN and GIoU loss, one
# per stage (the stages differ in their regression targets' std only).
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)

# the official ImageNet-1K file as downloaded (Google Drive, see README)
pretrained = 'pretrained/stvit-small-224.pth'
norm_cfg = dict(type='SyncBN', requires_grad=True)
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
    neck=dict(in_channels=[64, 128, 320, 512]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=norm_cfg,
            loss_cls=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                     [0.033, 0.033, 0.067, 0.067])
    ]))
