"""The frozen network and what sits around it: the ResNets (`resnet`), the
network pytree and its directory format (`networks`), lottery-ticket masks
(`masks`) and pruning (`pruning`), the visual prompt (`prompts`) and the
label mappings (`label_mapping`). Depends on nothing above it."""
