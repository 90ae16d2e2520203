"""One run: its config (`run_config`), workdir (`workdir`), inputs
(`inputs`), devices (`sharding`), jitted steps (`steps`), checkpoints, the
loop (`loop.train_and_evaluate`) and the summary."""
