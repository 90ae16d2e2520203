"""What a run measures and how it is recorded: calibration and accuracy
(`calibration`), metrics.jsonl and TensorBoard (`metric_writer`), the
figures (`plots`; the visual-prompting ones in `prompt_plots` and
`mapping_plot`) and W&B (`wandb_log`)."""
