# RetinaNet + FPN (mmdet's retinanet_r50_fpn.py) with STViT-S as backbone.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'
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
    # the base's FPN: P3-P5 from stages 2-4 (start_level=1), P6/P7 by
    # stride-2 convs on stage 4's output
    neck=dict(in_channels=[64, 128, 320, 512]))
