# The demo: Mask R-CNN STViT-S (configs/mask_rcnn_stvit_s_1x.py) trained from
# random init on the embedded toy set (data/toy_coco, written by
# `python tools/misc/make_toy_data.py` or tools/demo.py) on a CPU.
# Only data, image scale and schedule differ from the real config: the same
# model base, with the toy data and schedule in configs/toy/_base_/.
_base_ = [
    '../_base_/models/mask_rcnn_stvit_s.py',
    './_base_/toy_coco.py',
    './_base_/toy_schedule.py',
]

model = dict(
    # no ImageNet weights on a laptop: random init
    backbone=dict(init_cfg=None, drop_path_rate=0.),
    roi_head=dict(
        bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    # a handful of objects per image: fewer proposals and sampled RoIs keep
    # mmcv's single-threaded CPU RoIAlign from dominating the step time
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))
