"""Many runs: the grid of a study over networks, methods, datasets and
budgets (`grid`), the sweep that runs it (`sweep`), the report (`report`)
and the paper's claims (`claims`)."""
