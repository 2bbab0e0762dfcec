"""Deep backbones: registry, weights, training, features, selection, checkpoints and ONNX.

Owns: the backbone registry and packaged weights, heads, RcdNet, preprocessing, training,
features, backbone comparison (select), checkpoints, ONNX export and their commands.
May import: evaluate (AUC and DeLong for validation and selection), data, _compat, utils,
errors; never classical, study, bundle, reader or serve.
"""
