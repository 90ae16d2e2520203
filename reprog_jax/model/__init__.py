"""The frozen network and what sits around it: the ResNets (`resnet`), the
network pytree (`network`) and its directory format (`network_dir`),
lottery-ticket masks (`masks`) and pruning (`pruning`), the visual prompt (`prompts`) and the
label mappings (`label_mapping`). Depends on nothing above it."""
