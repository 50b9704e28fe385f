# Cascade Mask R-CNN STViT-S (configs/cascade_mask_rcnn_stvit_s_3x.py) trained
# from random init on the embedded toy set (data/toy_coco, written by
# `python tools/misc/make_toy_data.py` or tools/demo.py) on a CPU, as the
# demo's Mask R-CNN (mask_rcnn_stvit_s_toy.py). Only data, image scale,
# schedule and the CPU norm of the box heads (BN instead of SyncBN) differ:
# the same model base, with the toy data and schedule in configs/toy/_base_.
_base_ = [
    '../_base_/models/cascade_mask_rcnn_stvit_s.py',
    './_base_/toy_coco.py',
    './_base_/toy_schedule.py',
]

norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    # no ImageNet weights on a laptop: random init
    backbone=dict(init_cfg=None, drop_path_rate=0.),
    roi_head=dict(
        # the three stages of the base config, with 3 classes and BN
        bbox_head=[
            dict(
                type='ConvFCBBoxHead',
                num_shared_convs=4,
                num_shared_fcs=1,
                in_channels=256,
                conv_out_channels=256,
                fc_out_channels=1024,
                roi_feat_size=7,
                num_classes=3,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[0., 0., 0., 0.],
                    target_stds=stds),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                norm_cfg=norm_cfg,
                loss_cls=dict(
                    type='CrossEntropyLoss',
                    use_sigmoid=False,
                    loss_weight=1.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
            for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                         [0.033, 0.033, 0.067, 0.067])
        ],
        mask_head=dict(num_classes=3)),
    # a handful of objects per image: fewer proposals and sampled RoIs keep
    # mmcv's single-threaded CPU RoIAlign from dominating the step time
    # (the base's three stages, 128 sampled RoIs instead of 512)
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=[
            dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=iou,
                    neg_iou_thr=iou,
                    min_pos_iou=iou,
                    match_low_quality=False,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=128,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                mask_size=28,
                pos_weight=-1,
                debug=False) for iou in (0.5, 0.6, 0.7)
        ]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))
