"""Reference figures each builder must hit, copied from shared/reference/param_counts.md.

PARAMS: name -> (trainable parameters, relative tolerance, source). ImageNet rows are built
with num_classes=1000 at the default input; SMALL_IMAGE rows with num_classes=10 at 32x32x3.
GMACS: multiply-adds at the default input, torchvision's `_ops` figures (agree within 2%).
"""

EXACT = 0.0

PARAMS = {
    "vgg11": (132_863_336, EXACT, "torchvision 0.29.1"),
    "vgg13": (133_047_848, EXACT, "torchvision 0.29.1"),
    "vgg16": (138_357_544, EXACT, "torchvision 0.29.1; keras.applications VGG16"),
    "vgg19": (143_667_240, EXACT, "torchvision 0.29.1; keras.applications VGG19"),
    "vgg11_bn": (132_868_840, EXACT, "torchvision 0.29.1"),
    "vgg13_bn": (133_053_736, EXACT, "torchvision 0.29.1"),
    "vgg16_bn": (138_365_992, EXACT, "torchvision 0.29.1"),
    "vgg19_bn": (143_678_248, EXACT, "torchvision 0.29.1"),
    "googlenet": (6_624_904, EXACT, "torchvision 0.29.1 (aux heads off)"),
    "resnet18": (11_689_512, EXACT, "torchvision 0.29.1"),
    "resnet34": (21_797_672, EXACT, "torchvision 0.29.1"),
    "resnet50": (25_557_032, EXACT, "torchvision 0.29.1"),
    "resnet101": (44_549_160, EXACT, "torchvision 0.29.1"),
    "resnet152": (60_192_808, EXACT, "torchvision 0.29.1"),
    "resnext50_32x4d": (25_028_904, EXACT, "torchvision 0.29.1"),
    "resnext101_32x8d": (88_791_336, EXACT, "torchvision 0.29.1"),
    "wide_resnet50_2": (68_883_240, EXACT, "torchvision 0.29.1"),
    "se_resnet50": (28_088_024, EXACT, "timm seresnet50; Hu et al. 2018"),
    "cbam_resnet50": (28_089_624, EXACT, "se_resnet50 + 16 x (7x7x2 spatial conv + BatchNorm); Woo et al. 2018 code"),
    "densenet121": (7_978_856, EXACT, "torchvision 0.29.1; keras.applications DenseNet121"),
    "densenet161": (28_681_000, EXACT, "torchvision 0.29.1"),
    "densenet169": (14_149_480, EXACT, "torchvision 0.29.1; keras.applications DenseNet169"),
    "densenet201": (20_013_928, EXACT, "torchvision 0.29.1; keras.applications DenseNet201"),
    "convnext_tiny": (28_589_128, EXACT, "torchvision 0.29.1; keras.applications ConvNeXtTiny"),
    "convnext_small": (50_223_688, EXACT, "torchvision 0.29.1; keras.applications ConvNeXtSmall"),
    "convnext_base": (88_591_464, EXACT, "torchvision 0.29.1; keras.applications ConvNeXtBase"),
    "convnext_large": (197_767_336, EXACT, "torchvision 0.29.1; keras.applications ConvNeXtLarge"),
    "squeezenet1_0": (1_248_424, EXACT, "torchvision 0.29.1; Iandola et al. 2016"),
    "squeezenet1_1": (1_235_496, EXACT, "torchvision 0.29.1"),
    "mobilenet_v1": (4_231_976, EXACT, "keras.applications MobileNet (alpha 1.0)"),
    "mobilenet_v2": (3_504_872, EXACT, "torchvision 0.29.1; keras.applications MobileNetV2"),
    "xception": (22_855_952, EXACT, "keras.applications Xception; Chollet 2017"),
    "vit_b_16": (86_567_656, EXACT, "torchvision 0.29.1"),
    "resmlp_s12": (15_350_000, 0.01, "timm resmlp_12_224; Touvron et al. 2021"),
}

SMALL_IMAGE_PARAMS = {
    "resnet20": (270_000, 0.02, "He et al. 2016 section 4.2"),
    "resnet56": (850_000, 0.02, "He et al. 2016 section 4.2"),
    "wrn_28_10": (36_500_000, 0.01, "Zagoruyko and Komodakis 2016"),
    "densenet_bc_100_12": (769_000, 0.02, "Huang et al. 2017"),
    "resnet32": (460_000, 0.02, "He et al. 2016 section 4.2"),
    "resnet44": (660_000, 0.02, "He et al. 2016 section 4.2"),
    "resnet110": (1_700_000, 0.02, "He et al. 2016 section 4.2"),
    "wrn_16_4": (2_700_000, 0.02, "Zagoruyko and Komodakis 2016"),
    "wrn_40_4": (8_900_000, 0.01, "Zagoruyko and Komodakis 2016"),
}

GMACS = {
    "resnet18": 1.814,
    "resnet50": 4.089,
    "resnet101": 7.801,
    "resnet152": 11.514,
    "vgg16": 15.47,
    "densenet121": 2.834,
    "googlenet": 1.498,
    "convnext_tiny": 4.456,
    "squeezenet1_0": 0.819,
    "squeezenet1_1": 0.349,
    "mobilenet_v2": 0.301,
    "vit_b_16": 17.564,
    "resnext50_32x4d": 4.23,
    "wide_resnet50_2": 11.398,
}
GMACS_TOLERANCE = 0.02
