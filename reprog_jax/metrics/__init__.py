"""What a run measures and how it is recorded: calibration and accuracy
(`calibration`), metrics.jsonl and TensorBoard (`metric_writer`), the
figures (`plots`) and W&B (`wandb_log`)."""
