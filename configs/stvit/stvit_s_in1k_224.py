# STViT-S on ImageNet-1K at 224, the authors' recipe (DeiT-style, their
# main.py / run.sh): 300 epochs, batch 1024 (8 GPUs x 128), AdamW lr 1e-3
# (5e-4 x 1024 / 512), wd 0.05, cosine to 1e-5 after 5 warm-up epochs,
# RandAugment m9-mstd0.5, random erasing 0.25, mixup 0.8, cutmix 1.0,
# label smoothing 0.1, EMA 0.99996. Paper: 25M params, 4.4G FLOPs, 83.6%.
# The official file evaluates as it is:
#   python tools/test.py configs/stvit/stvit_s_in1k_224.py pretrained/stvit-small-224.pth
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='STViT',
        arch='small',
        stoken_size=(8, 4, 1, 1),  # classification super token sizes
        n_iter=1,
        drop_path_rate=0.1,
        out_indices=(3, )),
    head=dict(
        type='STViTClsHead',
        num_classes=1000,
        in_channels=512,
        projection=1024,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]),
)

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

# timm's optimizer factory, as the authors used it: no weight decay on
# biases and 1-D parameters (norms); the 4-D layer scales keep it.
optim_wrapper = dict(
    optimizer=dict(
        type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8,
        betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5)
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
auto_scale_lr = dict(base_batch_size=1024)
